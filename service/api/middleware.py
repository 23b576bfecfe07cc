"""The ASGI middleware, outermost first: bearer-token check (``TokenAuth``), the
concurrent-studies limit on submissions (``StudyLimit``), body-size limit
(``BodySizeLimit``), UTF-8 JSON bodies only (``JsonBody``, with ``body_problem``). Each
answers a request it refuses itself, with the body of ``handlers.error_body``."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import lifecycle
from service.api.config import OPEN_PATHS
from service.api.handlers import DATABASE_RETRY_AFTER, database_down, database_problem, error_body
from service.api.principals import ANYONE, Principal
from service.api.redaction import credential_param
from service.api.services import Services


async def send_json(send: Send, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode()), *extra]})
    await send({"type": "http.response.body", "body": raw})


class TokenAuth:
    """``Authorization: Bearer <token>`` on every path but ``OPEN_PATHS``; a credential in
    the query string is refused everywhere (401): URLs end up in logs.

    401 (with ``WWW-Authenticate: Bearer``) without a bearer token, 403 with a wrong
    one; tokens are compared in constant time. With no token configured (the
    explicit ``insecure`` setting) every request is let in. It runs before anything
    reads the body, so an unauthenticated client learns nothing from validation.
    The caller's ``Principal`` goes to the routes in ``scope["state"]["principal"]``,
    and ``scope["state"]["authenticated"]`` says whether a valid token came (or none is
    needed): an open path (``/healthz``) answers an anonymous caller with less. On an
    open path a token is optional, but a bearer token that is sent must be valid (403).
    A request with more than one ``Authorization`` header is refused first (400 naming
    the header), on every path: which one counts would be a guess.
    """

    def __init__(self, app: ASGIApp, principals: dict[str, Principal]):
        self.app = app
        self.tokens = [(t.encode(), p) for t, p in principals.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(1 for key, _ in scope["headers"] if key.lower() == b"authorization") > 1:
            await send_json(send, 400, error_body(
                ["header", "Authorization"], "more than one Authorization header: send "
                "one (Authorization: Bearer <token>)", "value_error"))
            return
        name = credential_param(scope.get("query_string", b""))
        if name is not None:
            await send_json(send, 401, error_body(
                ["query", name], "credentials are accepted only in the Authorization "
                "header (Authorization: Bearer <token>), never in the URL",
                "unauthorized"), {"WWW-Authenticate": "Bearer"})
            return
        state = scope.setdefault("state", {})
        state["principal"] = ANYONE
        state["authenticated"] = not self.tokens
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.strip().partition(b" ")
        if not self.tokens or (scope["path"] in OPEN_PATHS and scheme.lower() != b"bearer"):
            # open: anyone, and a header of another scheme (a proxy's Basic) is not ours
            await self.app(scope, receive, send)
            return
        if scheme.lower() != b"bearer" or not token.strip():
            await send_json(send, 401, error_body(
                ["header", "Authorization"], "a bearer token is required "
                "(Authorization: Bearer <token>)", "unauthorized"),
                {"WWW-Authenticate": "Bearer"})
            return
        token = token.strip()
        # compare with every token, always: the time taken says nothing about which matched
        matched = None
        for known, principal in self.tokens:
            if hmac.compare_digest(token, known):
                matched = principal
        if matched is None:
            await send_json(send, 403, error_body(
                ["header", "Authorization"], "the bearer token is not valid", "forbidden"))
            return
        state["principal"] = matched
        state["authenticated"] = True
        await self.app(scope, receive, send)


class StudyLimit:
    """429 for ``POST /studies`` while the caller has as many studies queued as one owner
    may (``lifecycle.room_problem``), before the body is read or validated: a few counts
    of the database, in the event loop, so a flood of submissions at the cap is answered
    at once (no worker thread, no validation, no MLflow or Optuna lookup). The submission
    checks again, under its lock, when it stores the study. The database down: 503
    naming it, as a route's."""

    def __init__(self, app: ASGIApp, services: Services):
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and \
                scope["path"].rstrip("/") == "/studies":
            try:
                principal = scope.get("state", {}).get("principal", ANYONE)
                problem = lifecycle.room_problem(self.services, principal)
            except Exception as error:
                if not database_down(error):
                    raise
                await send_json(send, 503, database_problem(error),
                                {"Retry-After": DATABASE_RETRY_AFTER})
                return
            if problem is not None:
                await send_json(send, 429, error_body(["body"], problem, "too_many_studies"),
                                 {"Retry-After": "30"})
                return
        await self.app(scope, receive, send)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, [{"loc": ["body"], "msg": f"the request body exceeds {limit} "
                                "bytes, this server's limit", "type": "too_large"}])


class BodySizeLimit:
    """413 for a body over ``max_bytes``: by its Content-Length up front, and counted on
    the stream (a chunked or lying client is cut off at the limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await send_json(send, 400, error_body(["header", "Content-Length"],
                                                       "must be a number of bytes", "invalid"))
                return
            if int(length) > self.max_bytes:
                await send_json(send, 413, {"detail": BodyTooLarge(self.max_bytes).detail})
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException passes FastAPI's body reading untouched → 413
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


#: How deeply a request body's JSON may nest (an inline search space, the deepest a
#: study has, nests 4 levels).
MAX_JSON_DEPTH = 32
_BOMS = ((b"\xef\xbb\xbf", "UTF-8 with a byte-order mark"),
         (b"\xff\xfe", "UTF-16 or UTF-32 (a byte-order mark)"),
         (b"\xfe\xff", "UTF-16 (a byte-order mark)"),
         (b"\x00\x00\xfe\xff", "UTF-32 (a byte-order mark)"))


def _json_depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict)
                                                  else item))
    return deepest


def body_problem(body: bytes, content_type: bytes | None) -> tuple[int, list[Any], str] | None:
    """Why a request body is not UTF-8 JSON of a sane depth: (status, loc, reason), or
    None. Malformed JSON is left to FastAPI (422 with the position)."""
    if content_type is not None:
        media, _, params = content_type.decode("latin-1").partition(";")
        media = media.strip().lower()
        if not (media == "application/json" or
                (media.startswith("application/") and media.endswith("+json"))):
            return 415, ["header", "Content-Type"], \
                f"the body must be application/json (got {media or 'nothing'!r})"
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and \
                    value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                return 415, ["header", "Content-Type"], \
                    f"the body must be UTF-8 JSON (got charset={value.strip()})"
    for bom, what in _BOMS:
        if body.startswith(bom):
            return 400, ["body"], f"the body must be JSON in UTF-8 without a byte-order " \
                                  f"mark (RFC 8259); it is {what}"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return 400, ["body"], f"the body must be JSON in UTF-8 (RFC 8259); byte " \
                              f"{error.start} is not UTF-8"
    if "\x00" in text:
        return 400, ["body"], "the body must be JSON in UTF-8 (RFC 8259); it has NUL " \
                              "bytes (UTF-16 or UTF-32?)"
    try:
        depth = _json_depth(json.loads(text))
    except RecursionError:
        depth = MAX_JSON_DEPTH + 1
    except ValueError:
        return None  # not JSON: FastAPI answers 422 with the position
    if depth > MAX_JSON_DEPTH:
        return 400, ["body"], f"the body's JSON nests deeper than {MAX_JSON_DEPTH} levels"
    return None


class JsonBody:
    """A request body must be JSON in UTF-8 (RFC 8259), nested at most
    ``MAX_JSON_DEPTH`` deep: 415 naming the Content-Type header for another media type
    or charset, 400 naming the body for bytes that are not UTF-8 (UTF-16 and UTF-32,
    with or without a byte-order mark, are refused, never guessed at) or JSON nested
    too deep. A request without a Content-Type is taken as JSON (FastAPI's rule).

    It reads the whole body (``BodySizeLimit``, outside it, bounds it) and hands the
    same bytes on."""

    METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        try:
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client left
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
        except BodyTooLarge as error:
            await send_json(send, 413, {"detail": error.detail})
            return
        body = b"".join(chunks)
        if body:
            problem = body_problem(body, dict(scope["headers"]).get(b"content-type"))
            if problem is not None:
                status, loc, reason = problem
                await send_json(send, status, error_body(
                    loc, reason, "unsupported_media_type" if status == 415 else "invalid_body"))
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
