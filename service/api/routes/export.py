"""``GET /studies/{study}/export``: every trial of a study, one row each, CSV or JSON,
streamed."""

from __future__ import annotations

from itertools import islice
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from service.api import lifecycle, queries
from service.api.deps import Authenticated, PrincipalDep, ServicesDep
from service.api.export import columns, export_row, stream
from service.api.routes.studies import StudyRef
from service.api.schemas import ErrorPublic

router = APIRouter(prefix="/studies", tags=["studies"], dependencies=[Authenticated],
                   responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})

_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


@router.get("/{study}/export", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}, "application/json": {}}},
                       404: {"model": ErrorPublic}})
def export_study(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
                 format: Annotated[Literal["csv", "json"], Query(
                     description="csv or json")] = "csv") -> StreamingResponse:
    """Every trial, one row each, streamed (read from the service's records a chunk at a
    time, so a study of tens of thousands of trials is never held whole): parameters,
    state, a value per objective, failure reason, MLflow run and its link. `format=csv` (a
    header row, `param.<name>` columns: the study's search space) or `json`
    (`{"objective", "count", "data"}`)."""
    record = lifecycle.trials_record(services, study, principal)
    objective = dict(record.spec.get("objective") or {})
    metrics = [o.metric for o in services.spec_of(record).objectives]
    names = sorted(services.spec_of(record).search_space().params)
    count = queries.trial_count(services, record)  # rows numbered later are left out
    rows = (export_row(record.name, metrics, names, t)
            for t in islice(queries.each_trial(services, record), count))
    return StreamingResponse(stream(rows, format, objective, count, columns(metrics, names)),
                             media_type=_MEDIA[format], headers={
        "Content-Disposition": f'attachment; filename="{record.name}.{format}"'})
