"""``GET /healthz``: whether the database, the Ray cluster and MLflow answer (no token).

Anyone (a load balancer, a Kubernetes probe) gets the verdict alone; the checks and
their details (the database URL, the Ray dashboard and MLflow addresses) need a valid
token: they tell where the service's parts live."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import health as checks
from service.api.deps import ServicesDep
from service.api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic,
            responses={503: {"model": HealthPublic, "description": "a dependency is down"}})
def healthz(services: ServicesDep, request: Request):
    """Database, Ray (dashboard) and MLflow reachable: 200 if all are, else 503.

    Without a token the answer is `{"status": "ok"|"degraded"}` only; with a valid
    bearer token it adds each check and its detail, and the MLflow UI's URL."""
    report = checks.health(services)
    code = 200 if report["status"] == "ok" else 503
    if not request.scope.get("state", {}).get("authenticated", False):
        return JSONResponse({"status": report["status"]}, status_code=code)
    return JSONResponse(HealthPublic(**report).model_dump(mode="json"), status_code=code)
