"""The FastAPI app: ``create_app(settings)``.

Request path, outermost first: bearer-token check (``TokenAuth``), the concurrent-
studies limit on submissions (``StudyLimit``), body-size limit (``BodySizeLimit``),
UTF-8 JSON bodies only (``JsonBody``), then FastAPI's routing and validation. Routes
are thin: they call ``service.api.lifecycle`` and ``queries`` in a worker thread (every
call there blocks on Ray, MLflow, Optuna or the database) and map its errors to status
codes here, each 4xx with a body that names the field and the reason:

    {"detail": [{"loc": ["body", "max_trials"], "msg": "must be >= 1 (got 0)",
                 "type": "greater_than_equal"}]}

A background task started by the lifespan syncs every PENDING/RUNNING study with its
Ray job every ``sync_interval_s``; since it reads the rows, a restarted API resumes
following every study that is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import choices as catalog_domain
from service.api import errors, lifecycle
from service.api.config import OPEN_PATHS, ApiSettings
from service.api.principals import ANYONE, Principal
from service.api.routes import catalog, docs, export, health, pages
from service.api.routes import studies as study_routes
from service.api.services import Services
from trainables.validation import error_phrase

log = logging.getLogger("credit.api")

DESCRIPTION = """Submit hyperparameter studies of learning rules that avoid weight
transport, follow them, cancel them, and get their best configuration. Each study
runs as a Ray Job; every trial is an MLflow run. Every route but `/healthz` and the
docs needs `Authorization: Bearer <token>`."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The study service: routes, auth, limits, error bodies and the status sync."""
    settings = settings or ApiSettings()
    settings.check_startable()  # tokens, or an explicit insecure
    redact_access_log()
    services = Services.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(services.prepare)
        task = asyncio.create_task(_sync_forever(services, settings.sync_interval_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            services.db.dispose()

    app = FastAPI(title="credit-search study service", version="1", description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # offline: routes/docs.py
    app.state.services = services
    app.include_router(health.router)
    app.include_router(study_routes.router)
    app.include_router(catalog.router)
    app.include_router(docs.router)
    app.include_router(export.router)
    app.include_router(pages.router)
    app.include_router(pages.fragments)
    _add_error_handlers(app)
    # add_middleware wraps: the last added runs first (auth, the study limit, the size
    # limit, the body's encoding)
    app.add_middleware(JsonBody)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(StudyLimit, services=services)
    app.add_middleware(TokenAuth, principals=settings.principals)
    return app


async def _sync_forever(services: Services, interval_s: float) -> None:
    while True:
        try:
            await run_in_threadpool(lifecycle.sync_active, services)
        except Exception:  # keep syncing whatever one round met
            log.exception("study sync failed")
        await asyncio.sleep(interval_s)


# ------------------------------------------------------------------------ errors
def error_body(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def _add_error_handlers(app: FastAPI) -> None:
    def problem(status: int, loc: list[Any], kind: str, headers: dict | None = None):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(error_body(loc, str(exc), kind), status_code=status,
                                headers=headers)
        return handler

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": error_phrase(e), "type": e["type"]}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(errors.StudyRejected)
    async def _rejected(request: Request, exc: errors.StudyRejected) -> JSONResponse:
        detail = [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}
                  for loc, msg in exc.problems]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of the path, not one route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        if not isinstance(detail, list):  # no such route (404), wrong method (405)
            detail = [{"loc": ["path"], "msg": f"{detail}: {request.method} {request.url.path}",
                       "type": "http_error"}]
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=headers or None)

    app.add_exception_handler(errors.StudyNotFound,
                              problem(404, ["path", "study"], "not_found"))
    app.add_exception_handler(catalog_domain.UnknownSearchSpace,
                              problem(404, ["path", "name"], "not_found"))
    app.add_exception_handler(errors.NameTaken, problem(409, ["body", "name"], "name_taken"))
    app.add_exception_handler(errors.StudyStateConflict,
                              problem(409, ["path", "study"], "conflict"))
    app.add_exception_handler(errors.TooManyStudies,
                              problem(429, ["body"], "too_many_studies", {"Retry-After": "30"}))
    app.add_exception_handler(errors.BackendUnavailable,
                              problem(503, [], "backend_unavailable", {"Retry-After": "10"}))


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of the app answers at ``scope``'s path (Starlette's 405
    names the methods of the first route whose path matched only), and OPTIONS: each
    method is tried against the routes as the router itself would match it."""
    methods = ["OPTIONS"]
    for method in _METHOD_ORDER:
        probe = {**scope, "method": method}
        if method != "OPTIONS" and any(route.matches(probe)[0] == Match.FULL
                                       for route in app.router.routes):
            methods.append(method)
    return sorted(methods, key=_METHOD_ORDER.index)


# -------------------------------------------------------------------- middleware
async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode()), *extra]})
    await send({"type": "http.response.body", "body": raw})


#: Query parameters that would carry a credential: refused (a URL is logged), and
#: their values never written to the access log.
CREDENTIAL_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "key", "bearer",
                               "authorization"})


def _credential_param(query: bytes) -> str | None:
    """The first query parameter that carries a credential, if any."""
    from urllib.parse import parse_qsl

    for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name.lower() in CREDENTIAL_PARAMS:
            return name
    return None


class RedactCredentials(logging.Filter):
    """Access-log records (uvicorn's: client, method, path?query, version, status) with
    the values of ``CREDENTIAL_PARAMS`` replaced by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        from urllib.parse import parse_qsl, urlencode

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
    """

    def __init__(self, app: ASGIApp, principals: dict[str, Principal]):
        self.app = app
        self.tokens = [(t.encode(), p) for t, p in principals.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = _credential_param(scope.get("query_string", b""))
        if name is not None:
            await _send_json(send, 401, error_body(
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
            await _send_json(send, 401, error_body(
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
            await _send_json(send, 403, error_body(
                ["header", "Authorization"], "the bearer token is not valid", "forbidden"))
            return
        state["principal"] = matched
        state["authenticated"] = True
        await self.app(scope, receive, send)


class StudyLimit:
    """429 for ``POST /studies`` while the server runs its limit of studies, before the
    body is read or validated: one count of the database, in the event loop, so a
    flood of submissions at the limit is answered at once (no worker thread, no
    validation, no MLflow or Optuna lookup). The submission checks again, under its
    lock, when it stores the study."""

    def __init__(self, app: ASGIApp, services: Services):
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and \
                scope["path"].rstrip("/") == "/studies":
            problem = lifecycle.room_problem(self.services)
            if problem is not None:
                await _send_json(send, 429, error_body(["body"], problem, "too_many_studies"),
                                 {"Retry-After": "30"})
                return
        await self.app(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
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
                await _send_json(send, 400, error_body(["header", "Content-Length"],
                                                       "must be a number of bytes", "invalid"))
                return
            if int(length) > self.max_bytes:
                await _send_json(send, 413, {"detail": _BodyTooLarge(self.max_bytes).detail})
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException passes FastAPI's body reading untouched → 413
                    raise _BodyTooLarge(self.max_bytes)
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
        except _BodyTooLarge as error:
            await _send_json(send, 413, {"detail": error.detail})
            return
        body = b"".join(chunks)
        if body:
            problem = body_problem(body, dict(scope["headers"]).get(b"content-type"))
            if problem is not None:
                status, loc, reason = problem
                await _send_json(send, status, error_body(
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
