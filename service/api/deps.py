"""Route dependencies: the app's ``Services`` and health verdict, and the bearer scheme
for the OpenAPI page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from service.api.health import HealthMonitor
from service.api.principals import ANYONE, Principal
from service.api.services import Services

#: Documents the bearer token in the OpenAPI page. Enforcement is ``TokenAuth`` (a
#: middleware, so that it runs before the body is read); this scheme never rejects.
bearer = HTTPBearer(auto_error=False, description="one of the server's CREDIT_API_TOKENS")
Authenticated = Security(bearer)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_health(request: Request) -> HealthMonitor:
    return request.app.state.health


HealthDep = Annotated[HealthMonitor, Depends(get_health)]


def get_principal(request: Request) -> Principal:
    """The caller, as ``TokenAuth`` identified it."""
    return request.scope.get("state", {}).get("principal", ANYONE)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
