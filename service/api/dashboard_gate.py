"""The Optuna dashboard for admins only: ``python -m service.api.dashboard_gate STORAGE
--admins FILE --host H --port P``.

optuna-dashboard has no sign-in of its own, lists every study of its storage and
deletes them from its UI; where the API has named owners it must not be an open door.
This serves optuna-dashboard's WSGI app behind HTTP Basic sign-in with an admin
owner's identity, the one the API already gave them (user: their owner name,
password: their API token, as in MLflow): no credentials 401 (the browser asks), a
wrong password 401, an owner who is no admin 403. What decides is the API's own
list of principals: ``owners_file`` writes, for each named principal, its name, a
SHA-256 of its name and token, and its role (the process never holds a token: nothing
to leak from its environment or its file)."""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import socketserver
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from optuna_dashboard import wsgi

from service.api.principals import Principal

REALM = "credit-search Optuna dashboard (admins: owner name, API token)"


def _digest(name: str, token: str) -> str:
    return hashlib.sha256(f"{name}\0{token}".encode()).hexdigest()


def owners_file(principals: dict[str, Principal]) -> str:
    """The gate's list of who is who: one ``SHA256 ROLE`` line per named owner (ROLE:
    ``admin`` or ``owner``)."""
    return "".join(f"{_digest(p.name, token)} {'admin' if p.admin else 'owner'}\n"
                   for token, p in principals.items() if p.name)


def read_owners(text: str) -> list[tuple[str, bool]]:
    """``owners_file``'s lines as (digest, admin)."""
    return [(digest, role == "admin") for digest, _, role in
            (line.partition(" ") for line in text.split("\n") if line.strip())]


class AdminsOnly:
    """WSGI middleware: the wrapped app for an admin signed in with HTTP Basic; 401
    asking for sign-in without credentials or with wrong ones, 403 for an owner who is
    no admin."""

    def __init__(self, app: Callable, owners: list[tuple[str, bool]]):
        self.app = app
        self.owners = owners

    def _refuse(self, start_response, status: str, text: str) -> list[bytes]:
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status.startswith("401"):
            headers.append(("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'))
        start_response(status, headers)
        return [text.encode()]

    def __call__(self, environ: dict[str, Any], start_response) -> Iterable[bytes]:
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "basic":
            return self._refuse(start_response, "401 Unauthorized",
                                "sign in: your owner name and your API token (admins only)")
        try:
            name, _, token = base64.b64decode(value.strip(), validate=True).decode() \
                .partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return self._refuse(start_response, "401 Unauthorized", "malformed credentials")
        digest = _digest(name, token)
        # compare with every owner, always: the time taken says nothing about who matched
        matched: bool | None = None
        for known, admin in self.owners:
            if hmac.compare_digest(digest, known):
                matched = admin
        if matched is None:
            return self._refuse(start_response, "401 Unauthorized", "wrong name or token")
        if not matched:
            return self._refuse(start_response, "403 Forbidden",
                                "admins only: the Optuna dashboard lists and deletes every "
                                "owner's studies; your studies are at the API and in MLflow")
        return self.app(environ, start_response)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.api.dashboard_gate")
    parser.add_argument("storage")
    parser.add_argument("--owners", type=Path, required=True, help="owners_file's output")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    app = AdminsOnly(wsgi(args.storage), read_owners(args.owners.read_text()))
    with make_server(args.host, args.port, app, server_class=_ThreadingServer) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
