"""``GET /studies/{study}/export``: every trial of a study, one row each, CSV or JSON."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from service.api import lifecycle, queries
from service.api.deps import Authenticated, PrincipalDep, ServicesDep
from service.api.export import export_rows, render
from service.api.routes.studies import StudyRef
from service.api.schemas import ErrorPublic

router = APIRouter(prefix="/studies", tags=["studies"], dependencies=[Authenticated],
                   responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})

_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


@router.get("/{study}/export", response_class=Response,
            responses={200: {"content": {"text/csv": {}, "application/json": {}}},
                       404: {"model": ErrorPublic}})
def export_study(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
                 format: Annotated[Literal["csv", "json"], Query(
                     description="csv or json")] = "csv") -> Response:
    """One row per trial: parameters, state, a value per objective, failure reason, MLflow run
    and its link. `format=csv` (a header row, `param.<name>` columns) or `json`."""
    record = queries.get_study(services, study, principal)
    trials = lifecycle.study_trials(services, record.id, principal)
    objective = dict(record.spec.get("objective") or {})
    objectives = record.spec.get("objectives") or [objective]
    body = render(export_rows(record.name, objective, trials, objectives), format, objective)
    return Response(body, media_type=_MEDIA[format], headers={
        "Content-Disposition": f'attachment; filename="{record.name}.{format}"'})
