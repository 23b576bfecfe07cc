"""A study's trials in Optuna's storage: the storage opened, the trials its driver
could not finish closed, and the mark of a trial lost in a crash.

Each Optuna trial carries its Tune trial id (the user attribute ``TUNE_TRIAL_ID``), so
the storage, not Tune's saved state, is the truth about a study's trials.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import optuna
import sqlalchemy.exc

from service.trials import POPULATION_ATTR, TrialState, pareto_front

#: The Optuna user attribute that holds a trial's Tune trial id.
TUNE_TRIAL_ID = "tune_trial_id"
#: The Optuna user attribute that holds why a trial failed (so far: ``LOST``).
FAILURE_ATTR = "failure"
#: Why a trial of a resumed study has no result: Tune saves its experiment every few
#: seconds, and a trial it started after its last save is not in the saved state.
LOST = ("TrialLost: the study's driver stopped before Tune saved this trial; the resumed "
        "study ran another trial in its place")
#: The Optuna user attribute that counts a trial's restarts after an infrastructure
#: failure (its node died, its storage failed): the same trial, resumed from its last
#: checkpoint.
RESTARTS_ATTR = "restarts"
#: The Optuna *study* user attribute that says why the study waits (no alive node can
#: hold a trial); "" when it does not.
WAITING_ATTR = "waiting"
UNFINISHED = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


#: How long a call to the Optuna storage is retried while its database does not answer
#: (``CREDIT_STORE_RETRY_S``): a PostgreSQL restart takes seconds.
STORE_RETRY_ENV, STORE_RETRY_S = "CREDIT_STORE_RETRY_S", 120.0
log = logging.getLogger("credit.optuna")


def store_retry_s() -> float:
    return float(os.environ.get(STORE_RETRY_ENV) or STORE_RETRY_S)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) is the database connection failing, which passes
    when the server is back: not a bad query, not a constraint."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) \
                or getattr(seen, "connection_invalidated", False):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RetryingStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose every call is made again, with backoff, while its
    database connection fails (a restart of PostgreSQL): for up to ``store_retry_s``.
    Its engine checks a pooled connection before it uses it (``pool_pre_ping``), so the
    connections of the old server are replaced."""


def _retrying(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        deadline, wait = time.monotonic() + store_retry_s(), 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as error:
                if not connection_lost(error) or time.monotonic() + wait > deadline:
                    raise
                log.warning("Optuna storage %s failed (again in %.1f s): %s", name, wait,
                            " ".join(str(error).split())[:200])
                time.sleep(wait)
                wait = min(wait * 2, 8.0)

    return call


for _name in ("check_trial_is_updatable", "create_new_study", "create_new_trial",
              "delete_study", "get_all_studies", "get_all_trials", "get_best_trial",
              "get_n_trials", "get_study_directions", "get_study_id_from_name",
              "get_study_name_from_id", "get_study_system_attrs", "get_study_user_attrs",
              "get_trial", "get_trial_id_from_study_id_trial_number",
              "get_trial_number_from_id", "get_trial_param", "get_trial_params",
              "get_trial_system_attrs", "get_trial_user_attrs", "set_study_system_attr",
              "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
              "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr"):
    setattr(RetryingStorage, _name, _retrying(_name))


def open_storage(url: str) -> Any:
    """Optuna's storage at ``url``: sqlite waits up to 60 s for a busy database; a server
    (PostgreSQL) is retried through a restart (``RetryingStorage``)."""
    if url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RetryingStorage(url, engine_kwargs={"pool_pre_ping": True})


def study_id_of(storage: Any, study_name: str) -> int | None:
    """Optuna's id of study ``study_name``, or None if it never reached the storage."""
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        return None


def fail_unfinished_trials(storage: Any, study_name: str,
                           known_trial_ids: set[str] | None = None,
                           lost_only: bool = False) -> int:
    """After the search has ended, no Optuna trial of the study may stay RUNNING. One
    whose Tune trial Tune does not know (``known_trial_ids``) was lost: it says so.
    ``lost_only``: only those (a resumed search, whose known trials go on)."""
    study_id = study_id_of(storage, study_name)
    if study_id is None:
        return 0
    failed = 0
    for t in storage.get_all_trials(study_id, deepcopy=False, states=UNFINISHED):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        tune_id = t.user_attrs.get(TUNE_TRIAL_ID)
        lost = known_trial_ids is not None and tune_id not in known_trial_ids and \
            t.user_attrs.get(POPULATION_ATTR) not in known_trial_ids
        if lost_only and not lost:
            continue
        if lost:
            storage.set_trial_user_attr(trial_id, FAILURE_ATTR, LOST)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        failed += 1
    return failed


def set_trial_attr(storage: Any, study_name: str, tune_trial_id: str, key: str,
                   value: Any) -> bool:
    """Set user attribute ``key`` of the study's trial of Tune trial ``tune_trial_id``;
    whether that trial was found."""
    study_id = study_id_of(storage, study_name)
    if study_id is None:
        return False
    found = False
    for t in storage.get_all_trials(study_id, deepcopy=False):
        # a Ray trial's own Optuna trial, or each member of its population
        if tune_trial_id in (t.user_attrs.get(TUNE_TRIAL_ID), t.user_attrs.get(POPULATION_ATTR)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, key, value)
            found = True
    return found


def set_study_attr(storage: Any, study_name: str, key: str, value: Any) -> None:
    """Set user attribute ``key`` of the study (nothing if it is not in the storage)."""
    study_id = study_id_of(storage, study_name)
    if study_id is not None:
        storage.set_study_user_attr(study_id, key, value)


def lost_trial_ids(storage: Any, study_name: str) -> set[str]:
    """The Tune trial ids of the study's trials marked lost (``LOST``)."""
    study_id = study_id_of(storage, study_name)
    if study_id is None:
        return set()
    return {t.user_attrs.get(TUNE_TRIAL_ID) for t in
            storage.get_all_trials(study_id, deepcopy=False)
            if t.user_attrs.get(FAILURE_ATTR) == LOST}


#: Optuna's states in ours.
STATES = {optuna.trial.TrialState.COMPLETE: TrialState.COMPLETE,
          optuna.trial.TrialState.RUNNING: TrialState.RUNNING,
          optuna.trial.TrialState.FAIL: TrialState.FAILED,
          optuna.trial.TrialState.PRUNED: TrialState.PRUNED,
          optuna.trial.TrialState.WAITING: TrialState.PENDING}
#: Ours in Optuna's.
OPTUNA_STATES = {ours: theirs for theirs, ours in STATES.items()}


def values_of(trial: Any, metrics: list[str]) -> dict[str, float] | None:
    """A COMPLETE trial's value of each objective, by metric; None for any other trial."""
    if trial.state != optuna.trial.TrialState.COMPLETE or trial.values is None:
        return None
    return dict(zip(metrics, trial.values, strict=False))


def pareto_trials(trials: list[Any], objectives: list[tuple[str, str]]) -> list[Any]:
    """The COMPLETE trials among ``trials`` that no other COMPLETE one dominates, by
    number, for ``objectives`` ((metric, mode) pairs, the study's order)."""
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                       and t.values is not None), key=lambda t: t.number)
    front = pareto_front([list(t.values) for t in complete], [m for _, m in objectives])
    return [complete[i] for i in front]


def storage_id(frozen: Any) -> int:
    """The storage's own id of an Optuna trial (the key of its incremental reads, as
    Optuna's cached storage uses it): ``FrozenTrial`` keeps it in ``_trial_id`` only."""
    return frozen._trial_id
