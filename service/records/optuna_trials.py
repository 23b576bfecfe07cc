"""A study's trials in Optuna's storage: the storage opened, the trials its driver
could not finish closed, and the mark of a trial lost in a crash.

Each Optuna trial carries its Tune trial id (the user attribute ``TUNE_TRIAL_ID``), so
the storage, not Tune's saved state, is the truth about a study's trials.
"""

from __future__ import annotations

from typing import Any

import optuna

from service.trials import TrialState

#: The Optuna user attribute that holds a trial's Tune trial id.
TUNE_TRIAL_ID = "tune_trial_id"
#: The Optuna user attribute that holds why a trial failed (so far: ``LOST``).
FAILURE_ATTR = "failure"
#: Why a trial of a resumed study has no result: Tune saves its experiment every few
#: seconds, and a trial it started after its last save is not in the saved state.
LOST = ("TrialLost: the study's driver stopped before Tune saved this trial; the resumed "
        "study ran another trial in its place")
UNFINISHED = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def open_storage(url: str) -> Any:
    """Optuna's storage at ``url`` (sqlite: waits up to 60 s for a busy database)."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


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
        lost = known_trial_ids is not None and t.user_attrs.get(TUNE_TRIAL_ID) not in \
            known_trial_ids
        if lost_only and not lost:
            continue
        if lost:
            storage.set_trial_user_attr(trial_id, FAILURE_ATTR, LOST)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        failed += 1
    return failed


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
