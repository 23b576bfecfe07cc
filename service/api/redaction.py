"""Credentials never in a URL: the query parameters that would carry one, and the
access-log filter that hides their values (``TokenAuth`` refuses such requests, but
uvicorn logs the URL first)."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

#: Query parameters that would carry a credential: refused (a URL is logged), and
#: their values never written to the access log.
CREDENTIAL_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "key", "bearer",
                               "authorization"})


def credential_param(query: bytes) -> str | None:
    """The first query parameter that carries a credential, if any."""
    for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name.lower() in CREDENTIAL_PARAMS:
            return name
    return None


class RedactCredentials(logging.Filter):
    """Access-log records (uvicorn's: client, method, path?query, version, status) with
    the values of ``CREDENTIAL_PARAMS`` replaced by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) \
                and "?" in args[2]:
            path, _, query = args[2].partition("?")
            pairs = [(k, "***" if k.lower() in CREDENTIAL_PARAMS else v)
                     for k, v in parse_qsl(query, keep_blank_values=True)]
            record.args = (*args[:2], f"{path}?{urlencode(pairs, safe='*')}", *args[3:])
        return True


def redact_access_log() -> None:
    """Install ``RedactCredentials`` on uvicorn's access log (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCredentials) for f in access.filters):
        access.addFilter(RedactCredentials())
