"""``/studies``: submit, list, show, trials, best, cancel.

Every handler is a plain ``def``: FastAPI runs it in its threadpool, so the blocking
calls of the domain functions (Ray Jobs, MLflow, Optuna, the database) never stall
the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse

from service.api import lifecycle, pareto, queries, queue, reports
from service.api.deps import Authenticated, PrincipalDep, ServicesDep
from service.api.principals import ANYONE, Principal
from service.api.schemas import (
    BestPublic,
    ErrorPublic,
    ParetoPublic,
    StudiesPublic,
    StudyCreate,
    StudyPublic,
    StudyStatus,
    TrialsPublic,
)
from service.api.services import Services
from service.records import db
from service.records.db import StudyRecord
from service.records.links import mlflow_runs

router = APIRouter(prefix="/studies", tags=["studies"], dependencies=[Authenticated],
                   responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})

StudyRef = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                               description="the study's id, or its name")]


def to_public(services: Services, record: StudyRecord, principal: Principal = ANYONE,
              positions: dict[str, int] | None = None) -> StudyPublic:
    """The study as ``principal`` sees it: its row, with the counts and best of
    ``queries.current_counts`` and ``queries.current_best``, its place in the queue
    (``positions``: the queue's, read once per request; read here if not given), and
    the links they can open."""
    spec = record.spec
    if record.status == db.QUEUED and positions is None:
        positions = queue.positions(services)
    return StudyPublic(
        id=record.id, name=record.name, status=record.status,
        queue_position=(positions or {}).get(record.id), message=record.message or "",
        space=spec["space"]["name"] if isinstance(spec["space"], dict) else spec["space"],
        sampler=spec["sampler"], objective=spec["objective"],
        objectives=spec.get("objectives") or [spec["objective"]], max_trials=spec["max_trials"],
        population=spec.get("population", 1),
        parallel_trials=spec["parallel_trials"], counts=queries.current_counts(record),
        restarts=queries.current_restarts(record), best=queries.current_best(record),
        job_id=record.job_id, mlflow_experiment_id=record.experiment_id,
        mlflow_parent_run_id=record.parent_run_id, spec=queries.public_spec(record),
        created_at=queries.aware(record.created_at),
        started_at=queries.aware(record.started_at) if record.started_at else None,
        updated_at=queries.aware(record.updated_at),
        links={"self": f"/studies/{record.id}",
               "mlflow": mlflow_runs(services.settings.mlflow_ui_url, record.experiment_id,
                                     record.name),
               "mlflow_parent_run": services.mlflow_link(record.experiment_id,
                                                         record.parent_run_id),
               "optuna": queries.optuna_link(services, record.name, principal)},
    )


@router.post("", status_code=201, response_model=StudyPublic,
             responses={400: {"model": ErrorPublic,
                              "description": "the body is not UTF-8, or nests too deep"},
                        409: {"model": ErrorPublic, "description": "name taken"},
                        413: {"model": ErrorPublic, "description": "body too large"},
                        415: {"model": ErrorPublic, "description": "not application/json"},
                        422: {"model": ErrorPublic, "description": "invalid study"},
                        429: {"model": ErrorPublic,
                              "description": "the owner's queue is full"},
                        503: {"model": ErrorPublic, "description": "Ray unreachable"}})
def submit_study(body: StudyCreate, services: ServicesDep, principal: PrincipalDep) -> Any:
    """Submit a study: it is validated, stored and started as a Ray job, or, while the
    server runs its limit of studies (or the owner theirs), it waits `QUEUED` with its
    `queue_position` and starts when a slot frees: the oldest queued study of the owner
    with the fewest running studies starts next. 429 only when the owner already has as
    many studies queued as one owner may.

    Everything but `name` and `space` has a default. `space` is a preset name (see
    `GET /search-spaces`) or an inline search space. A rejected request creates
    nothing: no record, no job.
    """
    record = lifecycle.submit_study(services, body, principal)
    return to_public(services, record, principal)


@router.get("", response_model=StudiesPublic)
def list_studies(services: ServicesDep, principal: PrincipalDep,
                 status: Annotated[list[StudyStatus] | None, Query(
                     description="only studies in these states (repeat for several)")] = None,
                 offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Any:
    """Studies, newest first, a page at a time; `count` is the total matching."""
    records, count = queries.list_studies(services, status, offset, limit, principal)
    positions = queue.positions(services) if any(r.status == db.QUEUED for r in records) \
        else {}
    return StudiesPublic(data=[to_public(services, r, principal, positions) for r in records],
                         count=count)


@router.get("/{study}", response_model=StudyPublic,
            responses={404: {"model": ErrorPublic}})
def get_study(study: StudyRef, services: ServicesDep, principal: PrincipalDep) -> Any:
    """A study: status, trial counts (complete/running/failed/pruned), best so far, links.

    Read from the study's record alone (the sync keeps it current), so it is cheap."""
    return to_public(services, queries.get_study(services, study, principal), principal)


#: ``GET /studies/{id}/trials``: trials per page by default, and at most.
TRIALS_PAGE, MAX_TRIALS_PAGE = 1000, 5000


@router.get("/{study}/trials", response_model=TrialsPublic,
            responses={404: {"model": ErrorPublic},
                       422: {"model": ErrorPublic, "description": "bad offset or limit"}})
def get_trials(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
               offset: Annotated[int, Query(ge=0, le=100_000_000, description=(
                   "trials to skip (by number)"))] = 0,
               limit: Annotated[int, Query(ge=1, le=MAX_TRIALS_PAGE, description=(
                   f"trials per page ({TRIALS_PAGE}; at most {MAX_TRIALS_PAGE})"))]
               = TRIALS_PAGE) -> Any:
    """The study's trials by number, a page at a time: state, parameters, value, and its
    MLflow run (as the sync last read them, a few seconds old at most). `count` is how
    many trials the study has, on all pages: follow `offset` until it is reached, or use
    `GET /studies/{id}/export` for all of them in one streamed body."""
    record = lifecycle.trials_record(services, study, principal)
    trials, count = queries.trials_page(services, record, offset, limit)
    return TrialsPublic(data=trials, count=count)


@router.get("/{study}/best", response_model=BestPublic,
            responses={404: {"model": ErrorPublic},
                       409: {"model": ErrorPublic, "description": "no trial completed yet, "
                             "or several objectives (the body points to `/pareto`)"}})
def get_best(study: StudyRef, services: ServicesDep, principal: PrincipalDep) -> Any:
    """The best configuration, its metrics and its MLflow run; 409 while no trial has
    completed, and for a study with several objectives (see `/pareto`). `final` says
    whether the study has really finished (ended, and no trial of it still counted
    running)."""
    return BestPublic(**queries.best_of(services, study, principal))


@router.get("/{study}/pareto", response_model=ParetoPublic,
            responses={404: {"model": ErrorPublic},
                       409: {"model": ErrorPublic, "description": "one objective (see `/best`)"}})
def get_pareto(study: StudyRef, services: ServicesDep, principal: PrincipalDep) -> Any:
    """The Pareto front of a study with several objectives: its COMPLETE trials that no
    other COMPLETE trial dominates, each with its number, parameters, value per objective
    and MLflow run; 409 for a study with one objective."""
    return ParetoPublic(**pareto.pareto_of(services, study, principal))


@router.get("/{study}/pareto.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorPublic},
                       409: {"model": ErrorPublic, "description": "one objective"}})
def get_pareto_png(study: StudyRef, services: ServicesDep, principal: PrincipalDep) -> Any:
    """The Pareto plot (PNG): every COMPLETE trial in the first two objectives, the front
    marked and joined."""
    return Response(pareto.pareto_png(services, study, principal), media_type="image/png")


@router.post("/{study}/cancel", response_model=StudyPublic,
             responses={202: {"model": StudyPublic,
                              "description": "stop requested; Ray has not stopped the job yet"},
                        404: {"model": ErrorPublic},
                        409: {"model": ErrorPublic, "description": "the study has ended"}})
def cancel_study(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
                 response: Response) -> Any:
    """Cancel a study: its Ray job is stopped, its MLflow runs end KILLED, its
    unfinished trials FAIL; the study is CANCELLED (200). A QUEUED study is CANCELLED
    at once, never started. 202 if Ray has not stopped
    the job in time: the study becomes CANCELLED as soon as it has."""
    record, done = lifecycle.cancel_study(services, study, principal=principal)
    if not done:
        response.status_code = 202
    return to_public(services, record, principal)


@router.get("/{study}/report", response_class=FileResponse,
            responses={200: {"content": {"text/html": {}}}, 404: {"model": ErrorPublic},
                       409: {"model": ErrorPublic, "description": "the study has not ended"},
                       503: {"model": ErrorPublic, "description": "MLflow does not answer"}})
def get_report(study: StudyRef, services: ServicesDep, principal: PrincipalDep) -> Any:
    """The study's report: its figures (Fig. 1 for mnist-fc, Fig. 2 for the autoencoder,
    accuracy for CIFAR-10) and a table beside the paper's numbers, as one self-contained
    HTML page, redrawn from its MLflow runs alone; 409 until the study has ended."""
    return FileResponse(reports.study_report(services, study, principal=principal),
                        media_type="text/html")


@router.get("/{study}/report/{figure}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorPublic},
                       409: {"model": ErrorPublic, "description": "the study has not ended"},
                       503: {"model": ErrorPublic, "description": "MLflow does not answer"}})
def get_report_figure(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
                      figure: Annotated[str, Path(pattern=r"^[a-z0-9_]+\.png$")]) -> Any:
    """One figure of the study's report, as PNG (e.g. `fig1.png`)."""
    return FileResponse(reports.study_report(services, study, figure, principal),
                        media_type="image/png")
