"""The studies domain: submit, follow, cancel a study; its trials and its best so far.

Plain functions over ``Services`` (settings, the study records, the Ray Jobs client,
the Optuna and MLflow stores) with no HTTP in them: routes call them in a worker
thread, and they raise the errors below, which the app turns into status codes.

Where each fact comes from:
- the study's row (``service.db``): spec, status, Ray job id, final result;
- the Ray job (``service.jobs``): PENDING / RUNNING / finished / stopped;
- Optuna storage: trials by state and the best COMPLETE value, live;
- MLflow: the parent run (link, ``result.json``) and each trial's run.

``sync_active`` (called every few seconds by the app) writes job state, counts and
the final result into the rows; since it starts from the rows, a restarted API picks
up every study still PENDING or RUNNING.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from search_spaces import SearchSpace, SearchSpaceError, load_space, parse_space, preset_names
from service import db, tracking
from service.api.config import ApiSettings
from service.db import StudyRecord
from service.jobs import TERMINAL, JobError, JobNotFound, NodeResources, RayJobs, exception_line
from service.study import StudySpec, close_study_records
from trainables.errors import CreditError
from trainables.experiments import EXPERIMENTS
from trainables.validation import error_phrase

log = logging.getLogger("credit.api")

Loc = tuple[str | int, ...]
CANCEL_REQUESTED = "cancel requested"  # how a study's message marks a pending stop


# ------------------------------------------------------------------------- errors
class StudyNotFound(CreditError):
    """No study with that id or name."""


class StudyRejected(CreditError):
    """The submitted study is invalid; ``problems`` are (field location, reason) pairs."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {r}" for loc, r in problems))


class NameTaken(CreditError):
    """A study of that name exists (here, or in the Optuna/MLflow stores)."""


class StudyStateConflict(CreditError):
    """The study is not in a state that allows the request (ended; nothing finished yet)."""


class TooManyStudies(CreditError):
    """The server already runs as many studies as it allows at once."""


class BackendUnavailable(CreditError):
    """The Ray cluster (or a store) did not answer; nothing was created."""


# ----------------------------------------------------------------------- services
@dataclass
class Services:
    """Everything the domain functions use, made once per app."""

    settings: ApiSettings
    db: db.Database
    jobs: RayJobs
    submit_lock: threading.Lock = field(default_factory=threading.Lock)
    _storage: Any = None
    _storage_lock: threading.Lock = field(default_factory=threading.Lock)
    _nodes: tuple[float, list[NodeResources]] | None = None

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> Services:
        token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
        return cls(settings=settings, db=db.Database(settings.database_url),
                   jobs=RayJobs(settings.ray_dashboard_url, token=token,
                                python=settings.job_python))

    def prepare(self) -> None:
        """Create local state once, before any study runs: the record table, the
        Optuna schema and a local MLflow store (a new sqlite store that several study
        drivers open at once fails)."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.db.create_all()
        self.optuna_storage()
        uri = self.settings.mlflow_tracking_uri
        if uri.startswith("sqlite:"):
            # the artifact root the runner gives a local store (CREDIT_HOME/mlartifacts)
            tracking.ensure_experiment(uri, self.settings.experiment_name,
                                       (self.settings.home / "mlartifacts").as_uri())

    def optuna_storage(self):
        with self._storage_lock:
            if self._storage is None:
                import optuna

                url = self.settings.optuna_storage
                kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
                self._storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            return self._storage

    def cluster_nodes(self, max_age_s: float = 10.0) -> list[NodeResources]:
        cached = self._nodes
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        nodes = [n for n in self.jobs.nodes() if n.alive]
        self._nodes = (time.monotonic(), nodes)
        return nodes

    def mlflow_link(self, experiment_id: str | None, run_id: str | None) -> str | None:
        base = self.settings.mlflow_ui_url
        if not base or not experiment_id or not run_id:
            return None
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------- validation
_CREATE_FIELDS = ("name", "space", "sampler", "seed", "objective", "max_trials",
                  "parallel_trials", "max_failed_trials", "early_stopping", "epochs",
                  "dataset", "batches_per_epoch", "resources", "final_seeds")
_LAYER_METRICS = ("angle", "relative_error", "sign_congruence", "update_angle")


def _space_loc(where: str) -> Loc:
    return ("space", *[p for p in where.split(".") if p]) if where else ("space",)


def resolve_space(space: Any) -> SearchSpace:
    """A preset by name, or an inline space; never a file (clients name no server paths)."""
    if isinstance(space, str):
        if space not in preset_names():
            reason = f"unknown preset {space!r}; valid: {', '.join(preset_names())}"
            if "/" in space or "\\" in space or space.endswith(".json") or ".." in space:
                reason = ("must be a preset name or an inline search space; files cannot be "
                          f"named over HTTP (valid presets: {', '.join(preset_names())})")
            raise StudyRejected([(("space",), reason)])
        return load_space(space)
    try:
        return parse_space(space)
    except SearchSpaceError as error:
        raise StudyRejected([(_space_loc(where), reason)
                             for where, reason in error.problems]) from None


def metrics_of(experiment: str) -> list[str]:
    """The per-epoch metrics a trial of ``experiment`` reports (what a study can optimise)."""
    exp = EXPERIMENTS.get(experiment)
    names = ["train_loss", "test_loss", "time_s"]
    if exp.classification:
        names.insert(0, "test_error")
    for layer in exp.layers:
        names += [f"{kind}/{layer.name}" for kind in _LAYER_METRICS]
    return names


def build_spec(svc: Services, body: Any) -> StudySpec:
    """The full ``StudySpec`` of a submitted ``StudyCreate``, with the server's stores.

    Raises ``StudyRejected`` naming each offending field (shape errors are caught
    before, by the request model), ``BackendUnavailable`` if the cluster cannot say
    what it holds.
    """
    settings = svc.settings
    fields = body.model_dump(exclude_unset=False)
    space = resolve_space(fields.pop("space"))
    problems: list[tuple[Loc, str]] = []
    if body.max_trials > settings.max_trials_per_study:
        problems.append((("max_trials",), (
            f"must be <= {settings.max_trials_per_study}, this server's limit per study "
            f"(got {body.max_trials})")))
    experiment = EXPERIMENTS.get(space.experiment)
    if body.dataset is not None and body.dataset not in experiment.datasets:
        from trainables.config import DATASET_NAMES

        known = body.dataset in DATASET_NAMES
        problems.append((("dataset",), (
            f"{'dataset' if known else 'unknown dataset'} {body.dataset!r} "
            f"{'does not fit' if known else 'for'} experiment {space.experiment!r}; valid: "
            f"{', '.join(experiment.datasets)}")))
        fields["dataset"] = None
    try:
        spec = StudySpec(**fields, space=space, tracking_uri=settings.mlflow_tracking_uri,
                         storage=settings.optuna_storage,
                         experiment_name=settings.experiment_name)
    except ValidationError as error:
        problems += _spec_problems(error)
        spec = None
    if spec is not None:
        valid = metrics_of(space.experiment)
        if spec.objective.metric not in valid:
            where = ("objective", "metric") if body.objective is not None else \
                ("space", "objective", "metric")
            problems.append((where, f"unknown metric {spec.objective.metric!r} for experiment "
                                    f"{space.experiment!r}; valid: {', '.join(valid)}"))
    if problems:
        raise StudyRejected(problems)
    problems += _resource_problems(svc, spec)
    if problems:
        raise StudyRejected(problems)
    return spec


def _spec_problems(error: ValidationError) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for e in error.errors():
        loc = tuple(e.get("loc", ()))
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, SearchSpaceError):
            for where, reason in inner.problems:
                head = where.split(".")[0] if where else ""
                if loc:
                    problems.append((loc + tuple(p for p in where.split(".") if p), reason))
                elif head in _CREATE_FIELDS:  # a study setting the space's config rejects
                    problems.append((tuple(where.split(".")), reason))
                else:
                    problems.append((_space_loc(where), reason))
        else:
            problems.append((loc or ("space",), error_phrase(e)))
    return problems


def _resource_problems(svc: Services, spec: StudySpec) -> list[tuple[Loc, str]]:
    try:
        nodes = svc.cluster_nodes()
    except JobError as error:
        raise BackendUnavailable(str(error)) from None
    problems: list[tuple[Loc, str]] = []
    for key, name in (("gpu", "GPU"), ("cpu", "CPU")):
        wanted = getattr(spec.resources, key)
        most = max((n.resources.get(name, 0.0) for n in nodes), default=0.0)
        if wanted > most:
            reason = (f"the cluster has no {name}" if most == 0 else
                      f"no node of the cluster has {wanted:g} {name}s (the most is {most:g})")
            problems.append((("resources", key), f"{reason}; a trial asking for {wanted:g} "
                                                  "would never start"))
    for key, wanted in spec.resources.custom.items():
        most = max((n.resources.get(key, 0.0) for n in nodes), default=0.0)
        if wanted > most:
            problems.append((("resources", "custom", key),
                             f"no node of the cluster has {wanted:g} of resource {key!r} "
                             f"(the most is {most:g}); a trial asking for it would never start"))
    return problems


# ------------------------------------------------------------------------ submit
def _name_used_outside(svc: Services, name: str) -> str | None:
    """Where ``name`` is already used by a study the service did not start, if anywhere."""
    try:
        svc.optuna_storage().get_study_id_from_name(name)
        return "Optuna storage"
    except KeyError:
        pass
    uri = svc.settings.mlflow_tracking_uri
    try:
        exp = tracking.client(uri).get_experiment_by_name(svc.settings.experiment_name)
        if exp is not None and tracking.find_runs(
                uri, exp.experiment_id,
                f"tags.`{tracking.STUDY_TAG}` = '{name}' and tags.`{tracking.ROLE_TAG}` = 'study'"):
            return "MLflow"
    except Exception as error:  # MLflow down: the runner would fail; say so now
        raise BackendUnavailable(f"MLflow ({uri}) unreachable: {error}") from None
    return None


def submit_study(svc: Services, body: Any) -> StudyRecord:
    """Validate, store and start a study as a Ray job; a rejected one leaves nothing.

    The row is written first (its UNIQUE name settles races between parallel
    submissions), then the job is submitted; if Ray refuses, the row is deleted
    again, so a failed submission leaves neither a row nor a job.
    """
    spec = build_spec(svc, body)
    where = _name_used_outside(svc, spec.name)
    if where is not None:
        raise NameTaken(f"study name {spec.name!r} is taken (by a study in {where})")
    study_id = str(uuid.uuid4())
    record = StudyRecord(id=study_id, name=spec.name, status=db.PENDING,
                         spec=json.loads(spec.model_dump_json()),
                         job_id=f"credit-{spec.name}-{study_id[:8]}", message="")
    limit = svc.settings.max_concurrent_studies
    with svc.submit_lock, svc.db.session() as session:
        active = db.count_active(session)
        if active >= limit:
            raise TooManyStudies(f"{active} studies are pending or running; this server runs "
                                 f"at most {limit} at once: retry when one has ended")
        try:
            db.create_study(session, record)
        except db.NameTaken:
            raise NameTaken(f"study name {spec.name!r} is taken") from None
    try:
        svc.jobs.submit(record.job_id, record.spec, svc.settings.job_env(),
                        metadata={"credit.study": spec.name, "credit.study_id": study_id},
                        entrypoint_resources=svc.settings.job_entrypoint_resources)
    except JobError as error:
        try:  # Ray may have taken the job before the answer was lost: stop it
            svc.jobs.stop(record.job_id)
        except JobError:
            pass
        with svc.db.session() as session:
            db.delete_study(session, study_id)
        raise BackendUnavailable(f"the study was not started: {error}") from None
    log.info("study %s (%s) submitted as Ray job %s", spec.name, study_id, record.job_id)
    return record


# ------------------------------------------------------------------------- read
def get_study(svc: Services, ref: str) -> StudyRecord:
    """A study by id, or by name."""
    with svc.db.session() as session:
        record = db.get_study(session, ref) or db.get_study_by_name(session, ref)
    if record is None:
        raise StudyNotFound(f"no study with id or name {ref!r}")
    return record


def list_studies(svc: Services, statuses: list[str] | None, offset: int,
                 limit: int) -> tuple[list[StudyRecord], int]:
    with svc.db.session() as session:
        return db.list_studies(session, statuses, offset, limit)


def spec_of(record: StudyRecord) -> StudySpec:
    return StudySpec.model_validate(record.spec)


def public_spec(record: StudyRecord) -> dict[str, Any]:
    """The spec as the client sees it: what it sent, defaults filled in, no server paths."""
    return {k: v for k, v in record.spec.items() if k in _CREATE_FIELDS}


def read_progress(svc: Services, spec: StudySpec) -> dict[str, Any] | None:
    """Trial counts by state and the best COMPLETE trial so far, from Optuna storage."""
    import optuna

    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return None
    states = optuna.trial.TrialState
    names = {states.COMPLETE: "complete", states.RUNNING: "running", states.FAIL: "failed",
             states.PRUNED: "pruned", states.WAITING: "pending"}
    counts = dict.fromkeys(names.values(), 0)
    best = None
    sign = 1.0 if spec.objective.mode == "min" else -1.0
    for t in storage.get_all_trials(study_id, deepcopy=False):
        counts[names[t.state]] += 1
        if t.state == states.COMPLETE and t.value is not None and math.isfinite(t.value):
            if best is None or sign * t.value < sign * best.value:
                best = t
    return {"counts": counts,
            "best": None if best is None else {
                "value": best.value, "params": dict(best.params),
                "trial_id": best.user_attrs.get("tune_trial_id"), "number": best.number}}


def _trial_runs(svc: Services, record: StudyRecord) -> dict[str, Any]:
    """MLflow child runs of the study's trials, by Tune trial id."""
    if not record.experiment_id or not record.parent_run_id:
        return {}
    try:
        runs = tracking.child_runs(record.spec["tracking_uri"], record.experiment_id,
                                   record.parent_run_id)
    except Exception as error:  # MLflow down: answer without the run links
        log.warning("MLflow runs of study %s unavailable: %s", record.name, error)
        return {}
    return {r.data.tags.get(tracking.TRIAL_TAG): r for r in runs
            if r.data.tags.get(tracking.ROLE_TAG) == "trial"}


def _failure_of(run: Any, failed: bool) -> dict[str, Any]:
    """A failed trial's whole reason and its kind, as its MLflow run keeps them."""
    if not failed:
        return {}
    from service.failures import failure_kind

    reason = run.data.tags.get(tracking.FAILURE_TAG) if run is not None else None
    kind = run.data.tags.get("credit.failure_kind") if run is not None else None
    return {"failure": reason or "failed (no reason recorded: the trial never reached MLflow)",
            "failure_kind": kind or failure_kind(reason)}


def study_trials(svc: Services, ref: str) -> list[dict[str, Any]]:
    """Every trial of a study: Optuna's state, parameters and value, and its MLflow run."""
    import optuna

    record = with_parent(svc, get_study(svc, ref))
    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(record.name)
    except KeyError:
        return []
    runs = _trial_runs(svc, record)
    states = optuna.trial.TrialState
    names = {states.COMPLETE: "COMPLETE", states.RUNNING: "RUNNING", states.FAIL: "FAILED",
             states.PRUNED: "PRUNED", states.WAITING: "PENDING"}
    out = []
    for t in storage.get_all_trials(study_id, deepcopy=False):
        trial_id = t.user_attrs.get("tune_trial_id")
        run = runs.get(trial_id)
        run_id = run.info.run_id if run is not None else None
        out.append({"number": t.number, "trial_id": trial_id, "state": names[t.state],
                    "params": dict(t.params),
                    "value": t.value if t.state == states.COMPLETE else None,
                    "started_at": t.datetime_start, "completed_at": t.datetime_complete,
                    "mlflow_run_id": run_id,
                    "mlflow_url": svc.mlflow_link(record.experiment_id, run_id),
                    **_failure_of(run, t.state == states.FAIL)})
    return out


def best_of(svc: Services, ref: str) -> dict[str, Any]:
    """The best configuration: the study's result once it ended, else the best trial so far,
    with the last metrics its MLflow run holds.

    ``StudyStateConflict`` while no trial has completed.
    """
    record = with_parent(svc, get_study(svc, ref))
    spec = spec_of(record)
    result = record.result or {}
    if result.get("best_params") is not None:
        best = {"value": result["best_value"], "params": result["best_params"],
                "config": result["best_config"], "trial_id": result.get("best_trial_id"),
                "run_id": result.get("best_run_id"), "final": result.get("final")}
    else:
        progress = read_progress(svc, spec)
        found = (progress or {}).get("best")
        if found is None:
            state = record.status if not record.active else \
                f"{record.status}, no trial completed yet"
            raise StudyStateConflict(f"study {record.name!r} has no completed trial ({state})")
        run = _trial_runs(svc, record).get(found["trial_id"])
        best = {"value": found["value"], "params": found["params"],
                "config": spec.trial_config(found["params"]).model_dump(),
                "trial_id": found["trial_id"], "run_id": run.info.run_id if run else None,
                "final": None}
    metrics: dict[str, float] = {}
    if best["run_id"]:
        try:
            metrics = dict(tracking.client(record.spec["tracking_uri"])
                           .get_run(best["run_id"]).data.metrics)
        except Exception as error:  # the value itself came from Optuna; metrics are extra
            log.warning("metrics of run %s unavailable: %s", best["run_id"], error)
    return {"study_id": record.id, "status": record.status, "final": not record.active,
            "metric": spec.objective.metric, "mode": spec.objective.mode,
            "value": best["value"], "params": best["params"], "config": best["config"],
            "metrics": metrics, "trial_id": best["trial_id"], "mlflow_run_id": best["run_id"],
            "mlflow_url": svc.mlflow_link(record.experiment_id, best["run_id"]),
            "final_evaluation": best["final"]}


# ------------------------------------------------------------------------ cancel
def cancel_study(svc: Services, ref: str, reason: str = "cancelled") -> tuple[StudyRecord, bool]:
    """Stop the study's Ray job, wait for it to end, close its MLflow runs (KILLED) and
    unfinished Optuna trials, and mark it CANCELLED: ``(study, True)``.

    ``(study, False)`` if Ray has not stopped the job within ``cancel_timeout_s`` (a
    driver still waiting for resources): the stop stays requested and the sync makes
    the study CANCELLED once the job has stopped. ``StudyStateConflict`` if the study
    had ended already (or ends on its own while being cancelled).
    """
    record = get_study(svc, ref)
    if not record.active:
        raise StudyStateConflict(f"study {record.name!r} has ended already ({record.status})")
    info = None
    if record.job_id:
        try:
            svc.jobs.stop(record.job_id)
            info = svc.jobs.wait(record.job_id, svc.settings.cancel_timeout_s)
        except JobNotFound:
            info = None
        except JobError as error:
            raise BackendUnavailable(f"could not stop the study's Ray job: {error}") from None
    if info is not None and info.status in ("SUCCEEDED", "FAILED"):
        sync_study(svc, record)  # it ended on its own before the stop reached it
        ended = get_study(svc, record.id)
        raise StudyStateConflict(f"study {record.name!r} ended ({ended.status}) before it "
                                 "could be cancelled")
    if info is not None and info.status not in TERMINAL:
        with svc.db.session() as session:
            db.update_active(session, record.id, message=(
                f"{CANCEL_REQUESTED}: Ray has not stopped the job yet ({info.status}); "
                "the study becomes CANCELLED when it does"))
        return get_study(svc, record.id), False
    _close_records(record, "KILLED", reason)
    fields = _final_progress(svc, record)
    with svc.db.session() as session:
        db.update_active(session, record.id, status=db.CANCELLED, message=reason, **fields)
    log.info("study %s cancelled", record.name)
    return get_study(svc, record.id), True


def cancel_active(svc: Services, reason: str) -> int:
    """Cancel every PENDING or RUNNING study (the local stack is going down)."""
    with svc.db.session() as session:
        records = db.active_studies(session)
    for record in records:
        try:
            cancel_study(svc, record.id, reason)
        except CreditError as error:
            log.warning("could not cancel study %s: %s", record.name, error)
    return len(records)


def _close_records(record: StudyRecord, status: str, reason: str) -> None:
    """End what the study left open: RUNNING MLflow runs → ``status``, unfinished Optuna
    trials → FAIL. A cancelled study's parent run ends KILLED whatever its driver wrote
    on its way out (a driver stopped by SIGTERM may have ended it FAILED)."""
    try:
        close_study_records(spec_of(record), status=status, reason=reason)
        if status == "KILLED":
            _parent_killed(record, reason)
    except Exception as error:  # the stores may be down; nothing more to do here
        log.warning("could not close the records of study %s: %s", record.name, error)


def _parent_killed(record: StudyRecord, reason: str) -> None:
    _, parent_id = _find_parent(record)
    if parent_id is None:
        return
    c = tracking.client(record.spec["tracking_uri"])
    if c.get_run(parent_id).info.status != "KILLED":
        c.set_tag(parent_id, tracking.FAILURE_TAG, reason)
        c.set_terminated(parent_id, status="KILLED")
    c.set_tag(parent_id, "credit.status", "CANCELLED")


def _final_progress(svc: Services, record: StudyRecord) -> dict[str, Any]:
    try:
        progress = read_progress(svc, spec_of(record))
    except Exception:
        return {}
    if progress is None:
        return {}
    best = progress["best"]
    return {"progress": progress, "best_value": None if best is None else best["value"]}


# -------------------------------------------------------------------------- sync
def _find_parent(record: StudyRecord) -> tuple[str | None, str | None]:
    uri = record.spec["tracking_uri"]
    exp = tracking.client(uri).get_experiment_by_name(record.spec["experiment_name"])
    if exp is None:
        return None, None
    runs = tracking.find_runs(uri, exp.experiment_id,
                              f"tags.`{tracking.STUDY_TAG}` = '{record.name}' and "
                              f"tags.`{tracking.ROLE_TAG}` = 'study'")
    return exp.experiment_id, (runs[0].info.run_id if runs else None)


def with_parent(svc: Services, record: StudyRecord) -> StudyRecord:
    """The record, with its MLflow ids looked up (and stored) if still unknown."""
    if record.parent_run_id:
        return record
    try:
        experiment_id, parent = _find_parent(record)
    except Exception:
        return record
    if parent:
        with svc.db.session() as session:
            row = db.get_study(session, record.id)
            if row is not None:
                row.experiment_id, row.parent_run_id = experiment_id, parent
                session.commit()
        record.experiment_id, record.parent_run_id = experiment_id, parent
    return record


REPORT_FILES = re.compile(r"^(report\.html|[a-z0-9_]+\.png)$")


def study_report(svc: Services, ref: str, name: str = "report.html") -> Path:
    """A file of the study's report (the HTML page, or one figure), built once from its
    MLflow runs when the study has ended (``service.report``) and kept under CREDIT_HOME."""
    from service.report import build_report

    if not REPORT_FILES.match(name):
        raise StudyNotFound(f"no report file {name!r}")
    record = with_parent(svc, get_study(svc, ref))
    if record.status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        raise StudyStateConflict(f"study {record.name!r} is {record.status}: its report is "
                                 "drawn once it has ended")
    if not record.parent_run_id:
        raise StudyStateConflict(f"study {record.name!r} has no MLflow runs to draw from")
    out = svc.settings.home / "reports" / record.id
    if not (out / "report.html").exists():
        build_report(record.parent_run_id, record.spec["tracking_uri"], out)
    path = out / name
    if not path.exists():
        raise StudyNotFound(f"study {record.name!r} has no report file {name!r}")
    return path


def _load_result(record: StudyRecord) -> dict[str, Any] | None:
    if not record.parent_run_id:
        return None
    c = tracking.client(record.spec["tracking_uri"])
    with tempfile.TemporaryDirectory(prefix="credit-result-") as tmp:
        try:
            path = c.download_artifacts(record.parent_run_id, "result.json", tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text())


def sync_active(svc: Services) -> int:
    """Bring every PENDING/RUNNING study's row up to date; how many were looked at."""
    with svc.db.session() as session:
        records = db.active_studies(session)
    for record in records:
        try:
            sync_study(svc, record)
        except Exception as error:  # one study's trouble must not stop the others
            log.warning("sync of study %s failed: %s", record.name, error)
    return len(records)


def sync_study(svc: Services, record: StudyRecord) -> None:
    """One study: job status → row; counts and best so far; the result once it ended."""
    try:
        info = svc.jobs.info(record.job_id) if record.job_id else None
    except JobNotFound:
        info = None
    except JobError:
        return  # the cluster is unreachable: try again next round
    if info is None:
        age = (db.utcnow() - aware(record.created_at)).total_seconds()
        if age > svc.settings.lost_job_grace_s:
            reason = ("its Ray job is gone (the cluster was restarted, or the job was "
                      "deleted)")
            _close_records(record, "FAILED", reason)
            with svc.db.session() as session:
                db.update_active(session, record.id, status=db.FAILED, message=reason)
        return
    record = with_parent(svc, record)
    fields: dict[str, Any] = {"experiment_id": record.experiment_id,
                              "parent_run_id": record.parent_run_id}
    fields.update(_final_progress(svc, record))
    if info.status == "RUNNING":
        fields["status"] = db.RUNNING
    if info.status in TERMINAL:
        fields.update(_outcome(svc, record, info))
    with svc.db.session() as session:
        db.update_active(session, record.id, **fields)


def _outcome(svc: Services, record: StudyRecord, info) -> dict[str, Any]:
    """Status, message and result of a study whose job has ended."""
    # cancel_study asked Ray to stop the job and could not wait for it
    requested = record.message.startswith(CANCEL_REQUESTED)
    if info.status == "STOPPED":
        _close_records(record, "KILLED", "cancelled")
        return {"status": db.CANCELLED, "message": "cancelled" if requested
                else info.message or "the Ray job was stopped"}
    result = _load_result(record)
    if result is not None:
        status = db.SUCCEEDED if result.get("status") == "SUCCEEDED" else db.FAILED
        fields = {"status": status, "result": result, "message": result.get("message") or ""}
        if result.get("best_value") is not None:
            fields["best_value"] = result["best_value"]
        return fields
    if requested:  # it ended otherwise than by the stop, but was being cancelled
        _close_records(record, "KILLED", "cancelled")
        return {"status": db.CANCELLED, "message": "cancelled"}
    # The driver died before recording a result: its own last error says why.
    reason = exception_line(svc.jobs.logs(record.job_id)) or info.message or "the study failed"
    _close_records(record, "FAILED", reason)
    return {"status": db.FAILED, "message": reason}


def aware(when):
    import datetime as dt

    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
