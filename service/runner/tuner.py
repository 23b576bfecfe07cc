"""A study's Tune ``Tuner``: its searcher (``service.runner.searcher``), scheduler
(ASHA or FIFO), the driver-side monitor's callback and stopper, Tune's result files,
and how often its experiment state and checkpoints are saved."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from service.runner.monitor import ProgressFn
from service.runner.searcher import OptunaAskTell
from service.spec import EarlyStopping, StudySpec
from trainables.memory import member_bytes

__all__ = ["CHECKPOINTS_KEPT", "EXPERIMENT_SAVE_PERIOD_S", "ProgressFn", "halving",
           "make_searcher", "members", "new_tuner", "result_loggers", "tune_environment"]

#: Seconds between two saves (and uploads to the storage) of a study's Tune experiment
#: state: its trials and their latest checkpoints, the searcher. Tune's defaults: 10 s
#: (saves) and 300 s (uploads).
EXPERIMENT_SAVE_PERIOD_S = 2
#: Checkpoints kept per trial: a trial may write this many since the last upload of the
#: experiment state before the one that state names is deleted.
CHECKPOINTS_KEPT = 5


@contextmanager
def tune_environment() -> Iterator[None]:
    """What Tune reads from the environment while a study's Tuner (new or restored) fits;
    the process's environment is as it was again after."""
    settings = {
        # Tune saves the experiment (its trials, the searcher) every few seconds; a trial
        # it created since its last save is lost when the driver dies. Save often: trials
        # last minutes, the state is a few kB.
        "TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S",
                                                   str(EXPERIMENT_SAVE_PERIOD_S)),
        # Tune adds no loggers of its own: its TensorBoard logger imports tensorboardX,
        # which imports torch, and a study's driver never does. Each Tuner names the
        # others itself (result_loggers).
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def result_loggers() -> list[tune.Callback]:
    """Tune's result files in each trial's folder, CSV and JSON, as Tune writes them by
    default (not its TensorBoard events: ``tune_environment``)."""
    return [CSVLoggerCallback(), JsonLoggerCallback()]


def members(spec: StudySpec) -> int:
    """Configurations per Ray trial (``population``; ``"auto"`` by memory)."""
    return spec.members(member_bytes(spec.trial_config({})))


def halving(spec: StudySpec) -> tuple[int, int] | None:
    """(grace period, reduction factor) of the study's early stopping, or None."""
    if not spec.early_stopping:
        return None
    es = spec.early_stopping if isinstance(spec.early_stopping, EarlyStopping) \
        else EarlyStopping()
    return min(es.grace_period, spec.epochs), es.reduction_factor


def make_searcher(spec: StudySpec, storage) -> OptunaAskTell:
    """Optuna's ask-and-tell behind Tune's ``Searcher`` (early-stopped trials PRUNED); Tune
    ranks trials by the first objective, Optuna is told every one."""
    return OptunaAskTell(space=spec.search_space().to_optuna(),
                         metric=spec.objective.metric, mode=spec.objective.mode,
                         study_name=spec.name, storage=storage, sampler=spec.sampler,
                         seed=spec.seed, epochs=spec.epochs, max_trials=spec.max_trials,
                         population=members(spec),
                         objectives=[(o.metric, o.mode) for o in spec.objectives])


def new_tuner(spec: StudySpec, storage, trainable, monitor, tune_store) -> tune.Tuner:
    """A new Tuner of the study's trials."""
    searcher = ConcurrencyLimiter(make_searcher(spec, storage),
                                  max_concurrent=spec.parallel_trials)
    if (rungs := halving(spec)) is not None and members(spec) == 1:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.epochs,
                                  grace_period=rungs[0], reduction_factor=rungs[1])
    else:  # a population halves its members itself (trainables.tune.train_population)
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric, mode=spec.objective.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=spec.max_trials,
            max_concurrent_trials=spec.parallel_trials, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name, **tune_store.run_config(), verbose=0,
            callbacks=[monitor.callback, *result_loggers()], stop=monitor.stopper,
            # The experiment state a restore reads names each trial's checkpoint as of
            # its last upload to the storage: upload it every few seconds (Tune's default
            # is 5 minutes), and keep enough checkpoints that the one it names still
            # exists after a crash (Tune deletes a trial's oldest beyond num_to_keep).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            sync_config=tune.SyncConfig(sync_period=EXPERIMENT_SAVE_PERIOD_S),
            # a trial whose node died (or whose stores failed) restarts from its last
            # checkpoint; a failure of the trial itself never reaches Tune as an error
            # (failures.TrialErrors)
            failure_config=tune.FailureConfig(max_failures=spec.max_trial_restarts,
                                              fail_fast=False),
        ),
    )
