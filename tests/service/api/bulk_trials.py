"""Studies of many trials, made in seconds in real stores (for the paging tests and
``tests/bench/bench_sync.py``): a RUNNING study's row in the service database, its MLflow
parent run, its Optuna study, then ``n`` trials written in one transaction per store —
Optuna's and MLflow's own tables (their schemas read from the databases, MLflow's
through its ORM models), as a driver's searcher and trial loggers would have left them
one by one, all started more than two minutes ago. Changes after that go through the
stores' ordinary APIs (``advance``).

Optuna keeps times as naive UTC; MLflow run starts are epoch milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field

import optuna
import sqlalchemy as sa
from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
from optuna.distributions import distribution_to_json

from service.api.schemas import StudyCreate
from service.api.services import Services
from service.api.validation import build_spec
from service.records import db, tags
from service.records import study_runs as R
from service.records import tracking as T
from service.records.optuna_trials import TUNE_TRIAL_ID

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class BulkStudy:
    """A study made by ``make_study``: its row id, MLflow ids, Optuna study id, and the
    run id of each Tune trial id."""

    name: str
    record_id: str
    experiment_id: str
    parent_run_id: str
    optuna_id: int
    spec: object
    runs: dict[str, str] = field(default_factory=dict)
    running: list[int] = field(default_factory=list)  # numbers of its RUNNING trials


def _tables(engine: sa.Engine, *names: str) -> list[sa.Table]:
    meta = sa.MetaData()
    meta.reflect(engine, only=names)
    return [meta.tables[n] for n in names]


def make_study(svc: Services, name: str, n: int, running: int = 0,
               no_run: frozenset[int] = frozenset()) -> BulkStudy:
    """A RUNNING study of ``n`` trials: the last ``running`` RUNNING, the others COMPLETE
    (value = its number / n, so trial 0 is best for "min"), each with its MLflow child run
    except the numbers in ``no_run``."""
    spec = build_spec(svc, StudyCreate(name=name, space="mnist-fc-backprop",
                                       max_trials=svc.settings.max_trials_per_study))
    uri = svc.settings.mlflow_tracking_uri
    experiment_id = T.ensure_experiment(uri, spec.experiment_name,
                                        (svc.settings.home / "mlartifacts").as_uri())
    parent = R.open_study_run(spec, uri, experiment_id, resume=False).info.run_id
    study = optuna.create_study(study_name=name, storage=svc.optuna_storage(),
                                direction="minimize" if spec.objective.mode == "min"
                                else "maximize")
    record = db.StudyRecord(id=str(uuid.uuid4()), name=name, status=db.RUNNING,
                            job_id=f"credit-{name}-x", spec=spec.model_dump(mode="json"),
                            message="", owner="")
    with svc.db.session() as session:
        db.create_study(session, record)
    made = BulkStudy(name, record.id, experiment_id, parent,
                     svc.optuna_storage().get_study_id_from_name(study.study_name), spec)
    _optuna_trials(svc, made, n, running)
    _mlflow_runs(svc, made, [i for i in range(n) if i not in no_run])
    made.running = list(range(n - running, n))
    return made


def trial_id(name: str, number: int) -> str:
    return f"{name}_{number:05d}"


def _params(spec, number: int) -> dict[str, tuple[object, float, str]]:
    """Each parameter's value, its internal value and its distribution JSON (a point of
    the space)."""
    out = {}
    for key, d in spec.search_space().params.items():
        dist = d.to_optuna()
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            value = dist.choices[number % len(dist.choices)]
        elif dist.log:
            value = dist.low * (dist.high / dist.low) ** ((number % 97) / 97)
        else:
            value = dist.low + (dist.high - dist.low) * ((number % 97) / 97)
            if isinstance(dist, optuna.distributions.IntDistribution):
                value = int(value)
        out[key] = (value, dist.to_internal_repr(value), distribution_to_json(dist))
    return out


def _optuna_trials(svc: Services, made: BulkStudy, n: int, running: int) -> None:
    engine = svc.optuna_storage().engine
    trials, params, values, attrs = _tables(
        engine, "trials", "trial_params", "trial_values", "trial_user_attributes")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.max(trials.c.trial_id))).scalar() or 0
        rows, p_rows, v_rows, a_rows = [], [], [], []
        for number in range(n):
            tid, done = first + 1 + number, number < n - running
            rows.append({"trial_id": tid, "number": number, "study_id": made.optuna_id,
                         "state": "COMPLETE" if done else "RUNNING",
                         "datetime_start": now - dt.timedelta(seconds=120 + n - number),
                         "datetime_complete": now if done else None})
            p_rows += [{"trial_id": tid, "param_name": k, "param_value": v,
                        "distribution_json": j} for k, (_, v, j) in _params(made.spec,
                                                                             number).items()]
            if done:
                v_rows.append({"trial_id": tid, "objective": 0, "value": number / n,
                               "value_type": "FINITE"})
            a_rows.append({"trial_id": tid, "key": TUNE_TRIAL_ID,
                           "value_json": json.dumps(trial_id(made.name, number))})
        for table, batch in ((trials, rows), (params, p_rows), (values, v_rows),
                             (attrs, a_rows)):
            if batch:
                conn.execute(table.insert(), batch)


def _mlflow_runs(svc: Services, made: BulkStudy, numbers: list[int]) -> None:
    """One child run per trial in MLflow's ``runs`` and ``tags`` (its ORM models), RUNNING
    or FINISHED like the trial, started when it started."""
    engine = sa.create_engine(svc.settings.mlflow_tracking_uri)
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    artifacts = (svc.settings.home / "mlartifacts").as_uri()
    runs, run_tags = [], []
    last = max(numbers, default=-1) + 1
    for number in numbers:
        run_id, tid = uuid.uuid4().hex, trial_id(made.name, number)
        made.runs[tid] = run_id
        runs.append({"run_uuid": run_id, "name": f"{made.name}/trial-{number}",
                     "source_type": "LOCAL", "source_name": "", "entry_point_name": "",
                     "user_id": "credit", "status": "FINISHED", "lifecycle_stage": "active",
                     "start_time": now_ms - 1000 * (120 + last - number), "end_time": now_ms,
                     "source_version": "", "artifact_uri": f"{artifacts}/{run_id}",
                     "experiment_id": int(made.experiment_id)})
        run_tags += [{"key": k, "value": v, "run_uuid": run_id} for k, v in (
            (tags.PARENT, made.parent_run_id), (tags.STUDY, made.name),
            (tags.ROLE, tags.TRIAL_ROLE), (tags.TRIAL, tid))]
    with engine.begin() as conn:
        if runs:
            conn.execute(SqlRun.__table__.insert(), runs)
            conn.execute(SqlTag.__table__.insert(), run_tags)
    engine.dispose()


def advance(svc: Services, made: BulkStudy, finish: int, start: int) -> None:
    """What a running study does between two syncs, through Optuna's and MLflow's APIs:
    ``finish`` of its RUNNING trials COMPLETE, ``start`` new RUNNING trials with their
    MLflow child runs."""
    storage = svc.optuna_storage()
    for number in made.running[:finish]:
        tid = storage.get_trial_id_from_study_id_trial_number(made.optuna_id, number)
        storage.set_trial_state_values(tid, optuna.trial.TrialState.COMPLETE, [0.5])
    made.running = made.running[finish:]
    c = T.client(svc.settings.mlflow_tracking_uri)
    for _ in range(start):
        template = optuna.trial.create_trial(
            params={k: v for k, (v, _, _) in _params(made.spec, 0).items()},
            distributions={k: d.to_optuna() for k, d in made.spec.search_space().params.items()},
            state=optuna.trial.TrialState.RUNNING)
        template.datetime_start = dt.datetime.now()
        tid = storage.create_new_trial(made.optuna_id, template_trial=template)
        number = storage.get_trial_number_from_id(tid)
        storage.set_trial_user_attr(tid, TUNE_TRIAL_ID, trial_id(made.name, number))
        run = c.create_run(made.experiment_id, tags={
            tags.PARENT: made.parent_run_id, tags.STUDY: made.name, tags.ROLE: tags.TRIAL_ROLE,
            tags.TRIAL: trial_id(made.name, number)})
        made.runs[trial_id(made.name, number)] = run.info.run_id
        made.running.append(number)
