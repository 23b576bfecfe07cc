"""Optuna as a Ray Tune searcher, through public APIs only (Optuna's ask-and-tell).

Tune asks ``suggest`` for a trial's parameters and reports its end to
``on_trial_complete``; Optuna's study (in its persistent storage) records every
trial with the state it really ended in: COMPLETE with its objective only if it ran
every epoch, PRUNED if ASHA stopped it early, FAIL if it raised or reported no finite
value. (Ray's own ``OptunaSearch`` tells an early-stopped trial COMPLETE with its
partial value, and keeps its state in private attributes.)

The storage is the truth: each Optuna trial carries its Tune trial id (the user
attribute ``TUNE_TRIAL_ID``), so a restored searcher finds its trials there, whatever
state Tune saved with the experiment.

Several objectives: Optuna is told one value per objective (``objectives``, in order);
Tune itself ranks by ``metric``/``mode``, the first of them. Trials copied into the study
by a warm start (``service.records.warm_start``) inform the sampler but are not the
study's own: they do not count against ``max_trials``.

Imported only where a study runs: it imports Ray Tune and Optuna.
"""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from ray.tune.search import Searcher

from service.records.optuna_trials import (
    FAILURE_ATTR,
    LOST,
    OPTUNA_STATES,
    TUNE_TRIAL_ID,
    fail_unfinished_trials,
    study_id_of,
)
from service.records.warm_start import METRICS_ATTR, is_own, reported_metrics
from service.spec import SAMPLERS
from service.trials import POPULATION_ATTR, TrialState, is_finite, member_id, trial_state
from trainables.errors import ConfigError
from trainables.trial_reports import POPULATION_KEY, members_of

#: How each of ``SAMPLERS`` is built from a seed.
SAMPLER_FACTORIES = {
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed,
                                                       warn_independent_sampling=False),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
}
assert tuple(SAMPLER_FACTORIES) == SAMPLERS


def make_sampler(name: str, seed: int,
                 warm: list[optuna.trial.FrozenTrial] | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of that name (one of ``SAMPLERS``). CMA-ES reads trials of
    other studies only as ``source_trials`` (warm-starting CMA-ES): given ``warm``."""
    if name not in SAMPLER_FACTORIES:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    if name == "cmaes" and warm:
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            source_trials=warm)
    return SAMPLER_FACTORIES[name](seed)


class OptunaAskTell(Searcher):
    """Tune ``Searcher`` over the Optuna study ``study_name`` in ``storage``.

    The sampler (``sampler``, a name of ``SAMPLERS``) is seeded with ``seed`` plus the
    number of trials the study already holds, so a resumed study does not draw the
    same configurations again. Intermediate values are not reported: no pruner reads
    them (ASHA stops trials on Tune's side).

    The budget, ``max_trials``, is counted in Optuna's storage, not in Tune's saved
    state: after a crash, a trial Tune started since its last save is not in that
    state. Restored, the searcher marks such a trial that never finished lost (FAIL,
    ``failure`` = ``LOST``: a new trial replaces it); one that finished counts.
    """

    def __init__(self, *, space: dict[str, Any], metric: str, mode: str, study_name: str,
                 storage: Any, sampler: str, seed: int, epochs: int,
                 max_trials: int | None = None,
                 objectives: list[tuple[str, str]] | None = None, population: int = 1):
        super().__init__(metric=metric, mode=mode)
        #: (metric, mode) of each objective Optuna is told; the first is Tune's
        self.objectives = objectives or [(metric, mode)]
        self.space = space
        self.study_name = study_name
        self.storage = storage
        self.sampler = sampler
        self.seed = seed
        self.epochs = epochs
        self.max_trials = max_trials
        self.population = population
        self.numbers: dict[str, int] = {}  # Tune trial id (or member id) → Optuna trial number
        self.members: dict[str, list[str]] = {}  # Tune trial id → its members' ids
        self._study: optuna.Study | None = None

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            study = optuna.create_study(
                study_name=self.study_name, storage=self.storage, load_if_exists=True,
                directions=["minimize" if mode == "min" else "maximize"
                            for _, mode in self.objectives])
            trials = study.get_trials(deepcopy=False)
            warm = [t for t in trials if not is_own(t)]
            # the study's own trials so far (not those queued by hand): a resumed study
            # does not draw the same configurations again
            existing = sum(is_own(t) and t.state != optuna.trial.TrialState.WAITING
                           for t in trials)
            study.sampler = make_sampler(self.sampler, self.seed + existing, warm)
            self._study = study
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        left = None if self.max_trials is None else self.max_trials - self._spent()
        if left is not None and left <= 0:
            return Searcher.FINISHED
        if self.population == 1:
            trial = self.study.ask(fixed_distributions=self.space)
            trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
            self.numbers[trial_id] = trial.number
            return dict(trial.params)
        # a population: K configurations at once, each its own Optuna trial
        members = []
        for i in range(self.population if left is None else min(self.population, left)):
            trial = self.study.ask(fixed_distributions=self.space)
            key = member_id(trial_id, i)
            trial.set_user_attr(TUNE_TRIAL_ID, key)
            trial.set_user_attr(POPULATION_ATTR, trial_id)
            self.numbers[key] = trial.number
            members.append({"key": key, "params": dict(trial.params)})
        self.members[trial_id] = [m["key"] for m in members]
        return {POPULATION_KEY: members}

    def number_of(self, trial_id: str) -> int | None:
        """The Optuna trial number of Tune trial ``trial_id`` (from the storage when the
        saved state does not hold it)."""
        if trial_id not in self.numbers:
            for t in self.study.get_trials(deepcopy=False):
                if t.user_attrs.get(TUNE_TRIAL_ID) == trial_id:
                    self.numbers[trial_id] = t.number
        return self.numbers.get(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if self.population != 1:
            self._tell_members(trial_id, result, error)
            return
        number = self.number_of(trial_id)
        if number is None:
            return
        values = [None if result is None else result.get(m) for m, _ in self.objectives]
        done = self.epochs if result is None else int(result.get("epoch", self.epochs))
        state = trial_state(done, self.epochs, ended=True,  # PRUNED: stopped by ASHA
                            failed=error or not all(map(is_finite, values)))
        told = (values if len(values) > 1 else values[0]) \
            if state == TrialState.COMPLETE else None
        if result is not None and state == TrialState.COMPLETE:
            # what a later study may warm-start from, whatever its objectives (by number:
            # a search of every trial per trial would grow with the study)
            self._set_attr(number, METRICS_ATTR, reported_metrics(result))
        # skip_if_finished: a trial told before a driver restart keeps its state
        self.study.tell(number, told, state=OPTUNA_STATES[state], skip_if_finished=True)

    def _tell_members(self, trial_id: str, result: dict | None, error: bool) -> None:
        """Each member of a population told alone: its own state and value. Members the
        population never reported (it failed first) fail with it."""
        reported = members_of(result) or {}
        keys = self.members.get(trial_id) or [
            t.user_attrs[TUNE_TRIAL_ID] for t in self.study.get_trials(deepcopy=False)
            if t.user_attrs.get(POPULATION_ATTR) == trial_id]
        for key in keys:
            number = self.number_of(key)
            if number is None:
                continue
            member = reported.get(key, {})
            metrics = member.get("metrics") or {}
            values = [metrics.get(m) for m, _ in self.objectives] if metrics \
                else [member.get("value")]
            state = TrialState(member.get("state", TrialState.FAILED))
            if state in (TrialState.RUNNING, TrialState.PENDING):  # it never ended
                state = TrialState.FAILED
            if state == TrialState.COMPLETE and not all(map(is_finite, values)):
                state = TrialState.FAILED
            if state == TrialState.COMPLETE and metrics:
                self._set_attr(number, METRICS_ATTR, reported_metrics(metrics))
            told = (values if len(values) > 1 else values[0]) \
                if state == TrialState.COMPLETE else None
            self.study.tell(number, told, state=OPTUNA_STATES[state], skip_if_finished=True)

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        """A user attribute of trial ``number`` (through the storage's public API)."""
        storage = self.storage if not isinstance(self.storage, str) \
            else optuna.storages.get_storage(self.storage)
        study_id = study_id_of(storage, self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        try:
            storage.set_trial_user_attr(trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told before a driver restart: it has them

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "_study"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._study = None
        self._mark_lost()

    def _spent(self) -> int:
        """Trials of the budget: every own trial of the study but the lost ones."""
        return sum(t.user_attrs.get(FAILURE_ATTR) != LOST and is_own(t)
                   for t in self.study.get_trials(deepcopy=False))

    def _mark_lost(self) -> None:
        """Unfinished trials that the restored state does not know: lost in a crash."""
        fail_unfinished_trials(self.storage, self.study_name, set(self.numbers),
                               lost_only=True)
