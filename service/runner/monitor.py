"""The driver's view of a running study: counts, best so far, failures, the failure
budget — fed by a Tune callback and read by a Tune stopper.

Tune saves its callbacks and stopper with the experiment, and a restored experiment
(``--resume``) gets back those saved copies, not the driver's new objects. So the
callback and the stopper hold only the study's name, and find the live monitor of this
driver by it (:data:`LIVE`) each time they are called.

Imported only where a study runs: it imports Ray Tune.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from service.runner.failures import failure_reason_of, infrastructure_verdict, trial_failure
from service.spec import StudySpec
from service.trials import TrialState, better, count, trial_state
from trainables.trial_reports import POPULATION_KEY, members_of

ProgressFn = Callable[[dict[str, Any]], None]

#: Study name → the monitor of the study this process drives.
LIVE: dict[str, StudyMonitor] = {}


class StudyMonitor:
    """Counts, best so far and failures of the study this driver runs (one per study)."""

    def __init__(self, spec: StudySpec, progress: ProgressFn | None, recovery=None,
                 resources=None):
        self.spec = spec
        self.progress = progress
        self.recovery = recovery  # a runner.recovery.Recovery: restarts recorded
        self.resources = resources  # a runner.resources.ResourceWatch
        self.failed: dict[str, str] = {}
        self.restarts: dict[str, int] = {}  # Tune trial id → restarts so far
        self.recovering: dict[str, tuple[float, int]] = {}  # id → (failure seen, last epoch)
        self.last_epoch: dict[str, int] = {}
        self.stop_reason: str | None = None  # why the whole study stops (resources)
        self.best: float | None = None
        self.trials: list = []  # Tune's trials, in the order of its ResultGrid
        self.callback = MonitorCallback(spec.name)
        self.stopper = FailureBudget(spec.name)
        LIVE[spec.name] = self

    def close(self) -> None:
        if LIVE.get(self.spec.name) is self:
            del LIVE[self.spec.name]

    def seen(self, trials, result) -> None:
        obj = self.spec.objective
        if result and int(result.get("epoch", 0)) >= self.spec.epochs:
            value = result.get(obj.metric)
            if better(value, self.best, obj.mode):
                self.best = value
        if self.progress is not None:
            self.progress({"counts": counts_from_tune(trials, self.spec.epochs),
                           "best": self.best, "metric": obj.metric,
                           "max_trials": self.spec.max_trials})

    def over_budget(self) -> bool:
        """More failed trials than ``max_failed_trials``, or infrastructure failures."""
        limit = self.spec.max_failed_trials
        return (limit is not None and len(self.failed) > limit
                or infrastructure_verdict(self.failed, limit) is not None)

    def result(self, trials, trial, result) -> None:
        """A trial reported: training again after a restart, if it was restarting."""
        epoch = int(result.get("epoch", 0))
        if trial.trial_id in self.recovering:
            seen, last = self.recovering.pop(trial.trial_id)
            if self.recovery is not None:
                self.recovery.resumed(trial.trial_id, time.monotonic() - seen, epoch, last)
        self.last_epoch[trial.trial_id] = max(epoch, self.last_epoch.get(trial.trial_id, 0))
        self.seen(trials, result)

    def recover(self, trials, trial) -> None:
        """Tune restarts ``trial`` from its last checkpoint after an infrastructure failure:
        count it, and let it start once the stores answer."""
        count = self.restarts[trial.trial_id] = self.restarts.get(trial.trial_id, 0) + 1
        self.recovering[trial.trial_id] = (time.monotonic(),
                                           self.last_epoch.get(trial.trial_id, 0))
        if self.recovery is not None:
            self.recovery.restarted(trial.trial_id, count, self.spec.max_trial_restarts,
                                    failure_reason_of(trial))
            self.recovery.wait_for_stores(trial.trial_id)
        self.seen(trials, None)

    def step(self, trials) -> None:
        """Every turn of Tune's loop: whether the cluster can still hold a trial."""
        if self.resources is not None and self.stop_reason is None:
            self.stop_reason = self.resources.check(trials)


class MonitorCallback(Callback):
    """Tune's events → the live monitor of study ``study``."""

    def __init__(self, study: str):
        self.study = study

    def on_step_begin(self, iteration, trials, **info):
        if (monitor := LIVE.get(self.study)) is not None:
            monitor.step(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if (monitor := LIVE.get(self.study)) is not None:
            monitor.failed.update(failed_members(result))
            monitor.result(trials, trial, result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if (monitor := LIVE.get(self.study)) is not None:
            monitor.recover(trials, trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (monitor := LIVE.get(self.study)) is not None:
            if (reason := trial_failure(trial.last_result)) is not None:
                monitor.failed[trial.trial_id] = reason
            monitor.failed.update(failed_members(trial.last_result))
            monitor.seen(trials, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        if (monitor := LIVE.get(self.study)) is not None:
            monitor.failed[trial.trial_id] = failure_reason_of(trial)
            monitor.seen(trials, None)

    def on_experiment_end(self, trials, **info):
        if (monitor := LIVE.get(self.study)) is not None:
            monitor.trials = list(trials)


class FailureBudget(Stopper):
    """Stops the whole study once the live monitor of ``study`` is over its budget."""

    def __init__(self, study: str):
        self.study = study

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        monitor = LIVE.get(self.study)
        return monitor is not None and (monitor.over_budget()
                                        or monitor.stop_reason is not None)


def failed_members(result: dict | None) -> dict[str, str]:
    """The members of a population's report that failed, with their reasons."""
    return {key: m["error"] for key, m in (members_of(result) or {}).items()
            if m["state"] == TrialState.FAILED and m.get("error")}


def counts_from_tune(trials, epochs: int) -> dict[str, int]:
    """The study's counts from Tune's trials (a trial Tune ended early is PRUNED; the
    members of a population count one by one, in the states it reported)."""
    def done(t) -> int:
        return int((t.last_result or {}).get("epoch", 0)) if t.status == "TERMINATED" else 0

    def states(t):
        members = (t.config or {}).get(POPULATION_KEY)
        if not members:
            yield trial_state(done(t), epochs, failed=t.status == "ERROR"
                              or trial_failure(t.last_result) is not None,
                              running=t.status == "RUNNING", ended=t.status == "TERMINATED")
            return
        reported = members_of(t.last_result) or {}
        for m in members:
            state = reported.get(m["key"], {}).get("state")
            if state is None:
                state = TrialState.RUNNING if t.status == "RUNNING" else \
                    TrialState.FAILED if t.status in ("ERROR", "TERMINATED") \
                    else TrialState.PENDING
            elif state == TrialState.RUNNING and t.status in ("ERROR", "TERMINATED"):
                state = TrialState.FAILED
            yield TrialState(state)

    return count(s for t in trials for s in states(t))
