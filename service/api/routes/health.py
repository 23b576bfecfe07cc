"""The probes, none of which needs a token:

- ``GET /livez``: the process answers (always 200; nothing else is touched);
- ``GET /readyz`` and ``GET /healthz``: whether the database, the Ray cluster and MLflow
  answer, as the background check last found them (``health.HealthMonitor``, every
  ``health_interval_s``): a request never waits on them.

Anyone (a load balancer, a Kubernetes probe) gets the verdict alone; the checks and
their details (the database URL, the Ray dashboard and MLflow addresses) need a valid
token: they tell where the service's parts live."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.deps import HealthDep
from service.api.schemas import HealthPublic, LivePublic

router = APIRouter(tags=["health"])

_DEGRADED = {503: {"model": HealthPublic, "description": "a dependency is down"}}


def _verdict(health: HealthDep, request: Request) -> JSONResponse:
    report = health.current()
    code = 200 if report["status"] == "ok" else 503
    if not request.scope.get("state", {}).get("authenticated", False):
        return JSONResponse({"status": report["status"]}, status_code=code)
    return JSONResponse(HealthPublic(**report).model_dump(mode="json"), status_code=code)


@router.get("/healthz", response_model=HealthPublic, responses=_DEGRADED)
def healthz(health: HealthDep, request: Request):
    """Database, Ray (dashboard) and MLflow reachable: 200 if all are, else 503, as the
    background check last found them (every `CREDIT_HEALTH_INTERVAL_S`, 5 s).

    Without a token the answer is `{"status": "ok"|"degraded"}` only; with a valid
    bearer token it adds each check and its detail, and the MLflow UI's URL."""
    return _verdict(health, request)


@router.get("/readyz", response_model=HealthPublic, responses=_DEGRADED)
def readyz(health: HealthDep, request: Request):
    """Ready to serve studies: the verdict of `/healthz` (200 ok, 503 degraded), for a
    readiness probe. No token needed; with a valid one it adds the checks."""
    return _verdict(health, request)


@router.get("/livez", response_model=LivePublic)
async def livez() -> LivePublic:
    """The process answers: always 200 `{"status": "ok"}`, for a liveness probe (no
    dependency is checked, no token needed)."""
    return LivePublic()
