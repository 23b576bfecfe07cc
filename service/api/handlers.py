"""Every error as a body that names the field and the reason (``error_body``), and the
exception handlers that map the study domain's errors to status codes:

    {"detail": [{"loc": ["body", "max_trials"], "msg": "must be >= 1 (got 0)",
                 "type": "greater_than_equal"}]}

The service database not answering (PostgreSQL restarting, its connection lost) is a
503 naming the database (``database_problem``), wherever it is met: a route, or a
middleware that counts studies.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from service.api import errors
from service.api.choices import UnknownSearchSpace
from trainables.validation import error_phrase


def error_body(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


#: Seconds a client is asked to wait before it retries while the database is down.
DATABASE_RETRY_AFTER = "5"


def database_down(error: BaseException) -> bool:
    """Whether ``error`` is the service database not answering (its server down or
    restarting, the connection lost, no connection free in time): it passes, unlike a
    bad query or a constraint."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def database_reason(error: BaseException) -> str:
    """"the study database is unavailable (why)", in one line: the driver's own first
    line, without SQLAlchemy's SQL and links."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = (lines[0] if lines else "")[:300] or type(cause).__name__
    return f"the study database is unavailable ({reason})"


def database_problem(error: BaseException) -> dict[str, Any]:
    """The 503 body of the database not answering: loc ``["database"]``, and why."""
    return error_body(["database"], f"{database_reason(error)}; retry in a few seconds",
                      "unavailable")


def add_error_handlers(app: FastAPI) -> None:
    """Request validation → 422 per field; a study's own errors → 404, 409, 422, 429,
    503; the database down → 503 naming it; Starlette's 404 and 405 with the path (405
    naming every allowed method)."""

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

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if database_down(exc):
            return JSONResponse(database_problem(exc), status_code=503,
                                headers={"Retry-After": DATABASE_RETRY_AFTER})
        # another database error (a bad query: a bug): still a body, never plain text
        return JSONResponse(error_body(["database"], "the study database refused the "
                                       f"request ({type(exc).__name__})", "database_error"),
                            status_code=500)

    for kind in (DBAPIError, PoolTimeout):  # OperationalError, InterfaceError: DBAPIError
        app.add_exception_handler(kind, _database)
    app.add_exception_handler(errors.StudyNotFound,
                              problem(404, ["path", "study"], "not_found"))
    app.add_exception_handler(UnknownSearchSpace, problem(404, ["path", "name"], "not_found"))
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
