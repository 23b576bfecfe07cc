"""A study's trials brought from Optuna and MLflow into the service's ``trials`` table
(``service.records.trial_table``), reading only what may have changed since the last
sync: its cost grows with the trials that changed, not with the trials there are.

What one sync reads:
- Optuna: the stored trials that may still change (unfinished, or finished but not yet
  ``checked``) and every trial Optuna made since the last sync, in one query by
  Optuna's own trial ids (its primary key). A finished Optuna trial never changes again,
  so nothing else is read.
- MLflow, only for the trials that still need it: the runs started since the earliest
  start of a trial without its run id (less ``RUN_CLOCK_SLACK_S``, for the clocks of
  other hosts; filtered on the start time alone, the study's trial runs kept) — one
  search, none when every trial has its run id — and the run of each trial that failed
  since, for its reason. A run id, once found, is kept with its trial; a finished trial
  MLflow has answered for is ``checked`` and never read again.

A row is written only when the trial it holds changed. ``SyncStats`` counts what each
sync read and wrote (``LAST_STATS`` keeps the latest per study, ``TOTALS`` the process's
sums): the tests assert on them, the benchmark reports them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from service.api.services import Services
from service.records import tags, tracking, trial_table
from service.records.db import StudyRecord
from service.records.optuna_trials import (
    RESTARTS_ATTR,
    STATES,
    TUNE_TRIAL_ID,
    storage_id,
    study_id_of,
    values_of,
)
from service.records.warm_start import own_trials
from service.runner.failures import failure_kind
from service.trials import TrialState

log = logging.getLogger("credit.api")

#: How far before a trial's start its MLflow run may say it started (another host's
#: clock): the search for runs not yet linked starts that much earlier.
RUN_CLOCK_SLACK_S = 60.0
FINISHED = (TrialState.COMPLETE.value, TrialState.FAILED.value, TrialState.PRUNED.value)


@dataclass
class SyncStats:
    """What one sync of a study's trials did."""

    optuna_trials_read: int = 0  # Optuna trials read (unfinished, new, just finished)
    mlflow_runs_read: int = 0  # MLflow runs read (found by the search, or got one by one)
    mlflow_searches: int = 0
    rows_written: int = 0  # rows of the trials table inserted or updated
    mlflow_ok: bool = True  # MLflow answered (or was not needed)


#: The latest ``SyncStats`` of each study (by id), and the process's sums.
LAST_STATS: dict[str, SyncStats] = {}
TOTALS: dict[str, int] = dict.fromkeys(("optuna_trials_read", "mlflow_runs_read",
                                        "mlflow_searches", "rows_written", "syncs"), 0)
_lock = threading.Lock()


def _restarts(trial: Any) -> int:
    try:
        return max(0, int(trial.user_attrs.get(RESTARTS_ATTR) or 0))
    except (TypeError, ValueError):
        return 0


def _iso(when: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset; a naive time is Optuna's, in local time."""
    return None if when is None else when.astimezone(dt.UTC).isoformat()


def _changed_at(trial: Any) -> float | None:
    # Optuna keeps naive local times: .timestamp() reads them as local, as written
    times = [w.timestamp() for w in (trial.datetime_start, trial.datetime_complete) if w]
    return max(times) if times else None


def _failure_of(run: Any, reachable: bool) -> dict[str, Any]:
    """A failed trial's whole reason and its kind, as its MLflow run keeps them."""
    reason = run.data.tags.get(tags.FAILURE) if run is not None else None
    kind = run.data.tags.get(tags.FAILURE_KIND) if run is not None else None
    unknown = "failed (no reason recorded: the trial never reached MLflow)" if reachable \
        else "failed (its reason is in MLflow, which did not answer)"
    return {"failure": reason or unknown, "failure_kind": kind or failure_kind(reason)}


def _trial_dict(t: Any, old: dict[str, Any] | None, metrics: list[str]) -> dict[str, Any]:
    """The trial as the API serves it, from its Optuna trial (the run id and failure
    kept from the stored row until MLflow is read): its value of each objective
    (``metrics``: the study's objectives, in order; ``value`` is the first's)."""
    state = STATES[t.state]
    values = values_of(t, metrics)
    out = {"number": t.number, "trial_id": t.user_attrs.get(TUNE_TRIAL_ID),
           "state": state.value, "params": dict(t.params),
           "value": None if values is None else values[metrics[0]], "values": values,
           "restarts": _restarts(t), "started_at": _iso(t.datetime_start),
           "completed_at": _iso(t.datetime_complete),
           "mlflow_run_id": (old or {}).get("mlflow_run_id")}
    if state == TrialState.FAILED and old and old.get("failure"):
        out.update(failure=old["failure"], failure_kind=old.get("failure_kind"))
    return out


def _changed_trials(storage: Any, study_id: int, cursor: trial_table.Cursor) -> list[Any]:
    """The Optuna trials that may differ from the stored rows: those stored unfinished
    (or not yet ``checked``) and every trial Optuna made after the highest stored, by
    Optuna's own id (its primary key: no scan of the study's trials). That is Optuna's
    own incremental read (``RDBStorage._get_trials``, what its cached storage uses); a
    storage without it, or rows stored without Optuna's ids, are read whole once."""
    open_ids = {row["optuna_id"] for row in cursor.open_rows.values()}
    incremental = getattr(storage, "_get_trials", None)
    if incremental is None or None in open_ids or (
            cursor.next_number and cursor.max_optuna_id is None):
        every = cursor.max_optuna_id is None  # each row gets Optuna's id, once
        return [t for t in storage.get_all_trials(study_id, deepcopy=False)
                if every or t.number >= cursor.next_number or t.number in cursor.open_rows]
    since = -1 if cursor.max_optuna_id is None else cursor.max_optuna_id
    return sorted(incremental(study_id, None, open_ids, since), key=lambda t: t.number)


def _runs(svc: Services, record: StudyRecord, needy: list[dict[str, Any]],
          stats: SyncStats) -> dict[str, Any]:
    """MLflow runs of the trials in ``needy`` (rows), by Tune trial id: the runs of trials
    without a run id by one search of the runs started since the earliest of them began,
    the failed ones' runs one by one."""
    c = tracking.client(svc.settings.mlflow_tracking_uri)
    runs: dict[str, Any] = {}
    # a trial that never started (Optuna's WAITING) has no run to look for
    starts = [r["data"]["started_at"] for r in needy
              if not r["data"].get("mlflow_run_id") and r["data"].get("started_at")]
    if starts:
        # by start time alone (a scan of one column); the study's own trial runs kept
        since = min(dt.datetime.fromisoformat(s).timestamp() for s in starts)
        query = f"attributes.start_time >= {int((since - RUN_CLOCK_SLACK_S) * 1000)}"
        found = tracking.find_runs(svc.settings.mlflow_tracking_uri, record.experiment_id, query)
        stats.mlflow_searches += 1
        stats.mlflow_runs_read += len(found)
        runs.update({r.data.tags.get(tags.TRIAL): r for r in found
                     if r.data.tags.get(tags.ROLE) == tags.TRIAL_ROLE
                     and r.data.tags.get(tags.PARENT) == record.parent_run_id})
    for r in needy:
        d = r["data"]
        if d["state"] == TrialState.FAILED.value and d.get("mlflow_run_id") \
                and d.get("trial_id") not in runs:
            runs[d.get("trial_id")] = c.get_run(d["mlflow_run_id"])
            stats.mlflow_runs_read += 1
    return runs


def sync_trials(svc: Services, record: StudyRecord) -> SyncStats | None:
    """Bring the study's rows in the ``trials`` table up to date with Optuna and MLflow,
    reading only what may have changed; what it did (None: the study is not in Optuna
    yet). Optuna not answering raises; MLflow not answering leaves run ids and failure
    reasons to a later sync (``mlflow_ok`` False)."""
    stats = SyncStats()
    storage = svc.optuna_storage()
    study_id = study_id_of(storage, record.name)
    if study_id is None:
        return None
    with svc.db.session() as session:
        cursor = trial_table.cursor(session, record.id)
    changed = _changed_trials(storage, study_id, cursor)
    stats.optuna_trials_read = len(changed)
    metrics = [o.metric for o in svc.spec_of(record).objectives]
    rows: dict[int, dict[str, Any]] = {}
    for t in own_trials(changed):  # a warm start's trials inform the sampler only
        old = cursor.open_rows.get(t.number)
        rows[t.number] = trial_table.row_of(_trial_dict(t, old and old["data"], metrics),
                                            False, _changed_at(t), storage_id(t))
    for number, old in cursor.open_rows.items():  # finished, MLflow not answered yet
        rows.setdefault(number, {**old, "data": dict(old["data"])})
    _link_runs(svc, record, list(rows.values()), stats)
    write = [r for n, r in rows.items() if _differs(r, cursor.open_rows.get(n))]
    new = {r["number"] for r in write if r["number"] not in cursor.open_rows
           and r["number"] >= cursor.next_number}
    if write:
        with svc.db.session() as session:
            stats.rows_written = trial_table.write(session, record.id, write, new)
    _count(record.id, stats)
    return stats


def _link_runs(svc: Services, record: StudyRecord, rows: list[dict[str, Any]],
               stats: SyncStats) -> None:
    """Run ids and failure reasons from MLflow into the rows that need them; a finished
    trial MLflow answered for is ``checked``."""
    needy = [r for r in rows
             if not r["data"].get("mlflow_run_id")
             or (r["state"] == TrialState.FAILED.value and not r["checked"])]
    reachable = bool(record.experiment_id and record.parent_run_id)
    runs: dict[str, Any] = {}
    if needy and reachable:
        try:
            runs = _runs(svc, record, needy, stats)
        except Exception as error:  # MLflow down: the next sync asks again
            log.warning("MLflow runs of study %s unavailable: %s", record.name, error)
            stats.mlflow_ok = False
    answered = reachable and stats.mlflow_ok
    for r in rows:
        d = r["data"]
        run = runs.get(d.get("trial_id"))
        if run is not None:
            d["mlflow_run_id"] = r["mlflow_run_id"] = run.info.run_id
        failed = d["state"] == TrialState.FAILED.value
        if failed and (run is not None or not d.get("failure") or answered):
            d.update(_failure_of(run, answered or not reachable))
        # a failed trial's reason may reach its run after Optuna says FAIL (the driver
        # records failures as the study ends): it is read again until its run has one
        r["checked"] = r["state"] in FINISHED and answered and not (
            failed and run is not None and not run.data.tags.get(tags.FAILURE))


def _differs(row: dict[str, Any], old: dict[str, Any] | None) -> bool:
    return old is None or any(row[k] != old.get(k) for k in row)


def _count(study_id: str, stats: SyncStats) -> None:
    with _lock:
        LAST_STATS[study_id] = stats
        for key, value in asdict(stats).items():
            if key in TOTALS:
                TOTALS[key] += int(value)
        TOTALS["syncs"] += 1
