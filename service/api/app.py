"""The FastAPI app: ``create_app(settings)``, the factory.

Request path, outermost first: the middleware of ``service.api.middleware`` (bearer
token, the concurrent-studies limit, body size, UTF-8 JSON bodies), then FastAPI's
routing and validation. Routes are thin: they call ``service.api.lifecycle`` and
``queries`` in a worker thread (every call there blocks on Ray, MLflow, Optuna or the
database); ``service.api.handlers`` maps their errors to status codes, each 4xx with a
body that names the field and the reason.

A background task started by the lifespan syncs every PENDING/RUNNING study with its
Ray job every ``sync_interval_s`` (``service.api.sync``); since it reads the rows, a
restarted API resumes following every study that is still running. Another checks the
database, Ray and MLflow every ``health_interval_s`` (``service.api.health``): the
probes (``/healthz``, ``/readyz``) answer from its last verdict. Both carry on through
a database that does not answer (a PostgreSQL restart): they log it and try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.api import sync
from service.api.config import ApiSettings
from service.api.handlers import add_error_handlers, database_down, database_reason
from service.api.health import HealthMonitor
from service.api.middleware import BodySizeLimit, JsonBody, StudyLimit, TokenAuth
from service.api.redaction import redact_access_log
from service.api.routes import catalog, docs, export, health, pages
from service.api.routes import studies as study_routes
from service.api.services import Services
from service.records import tracking

log = logging.getLogger("credit.api")

DESCRIPTION = """Submit hyperparameter studies of learning rules that avoid weight
transport, follow them, cancel them, and get their best configuration. Each study
runs as a Ray Job; every trial is an MLflow run. Every route but the probes (`/livez`,
`/readyz`, `/healthz`) and the docs needs `Authorization: Bearer <token>`."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The study service: routes, auth, limits, error bodies and the status sync."""
    settings = settings or ApiSettings()
    settings.check_startable()  # tokens, or an explicit insecure
    redact_access_log()
    if settings.mlflow_password is not None:  # MLflow asks who is there: the service's account
        tracking.use_account(settings.mlflow_username,
                             settings.mlflow_password.get_secret_value())
    services = Services.from_settings(settings)
    monitor = HealthMonitor(services)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(services.prepare)
        tasks = [asyncio.create_task(_sync_forever(services, settings.sync_interval_s)),
                 asyncio.create_task(_check_forever(monitor, settings.health_interval_s))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            services.db.dispose()

    app = FastAPI(title="credit-search study service", version="1", description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # offline: routes/docs.py
    app.state.services = services
    app.state.health = monitor
    app.include_router(health.router)
    app.include_router(study_routes.router)
    app.include_router(catalog.router)
    app.include_router(docs.router)
    app.include_router(export.router)
    app.include_router(pages.router)
    app.include_router(pages.fragments)
    add_error_handlers(app)
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
            await run_in_threadpool(sync.sync_active, services)
        except Exception as error:  # keep syncing whatever one round met
            if database_down(error):  # one line a round, not a traceback
                log.warning("study sync: %s; trying again", database_reason(error))
            else:
                log.exception("study sync failed")
        await asyncio.sleep(interval_s)


async def _check_forever(monitor: HealthMonitor, interval_s: float) -> None:
    """The health verdict, fresh: the first at once, then every ``interval_s``."""
    while True:
        try:
            await run_in_threadpool(monitor.refresh)
        except Exception:  # health() catches each check's errors; keep checking anyway
            log.exception("health check failed")
        await asyncio.sleep(interval_s)
