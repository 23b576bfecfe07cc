"""``GET /healthz``: whether the database, the Ray cluster and MLflow answer (no token)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api import health as checks
from service.api.deps import ServicesDep
from service.api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic,
            responses={503: {"model": HealthPublic, "description": "a dependency is down"}})
def healthz(services: ServicesDep):
    """Database, Ray (dashboard) and MLflow reachable: 200 if all are, else 503."""
    report = checks.health(services)
    return JSONResponse(HealthPublic(**report).model_dump(mode="json"),
                        status_code=200 if report["status"] == "ok" else 503)
