"""The search machinery of a study: Ray connection, Optuna sampler and searcher, the
driver-side monitor (counts, best so far, failure budget) and the Tune ``Tuner``."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace
from service.results import _error_text
from service.settings import TUNE_TRIAL_ID, trial_counts
from service.spec import SAMPLERS, EarlyStopping, StudySpec
from trainables.errors import ConfigError

ProgressFn = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------- helpers
#: How each of ``SAMPLERS`` is built from a seed.
_SAMPLER_FACTORIES = {
    "random": lambda optuna, seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe": lambda optuna, seed: optuna.samplers.TPESampler(seed=seed),
    "qmc": lambda optuna, seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    "cmaes": lambda optuna, seed: optuna.samplers.CmaEsSampler(
        seed=seed, warn_independent_sampling=False),
}
assert tuple(_SAMPLER_FACTORIES) == SAMPLERS


def make_sampler(name: str, seed: int):
    """The Optuna sampler of that name (one of ``SAMPLERS``)."""
    import optuna

    if name not in _SAMPLER_FACTORIES:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return _SAMPLER_FACTORIES[name](optuna, seed)


def connect_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a private local one (own temp dir)."""
    import ray

    if ray.is_initialized():
        return
    from service.quiet import ray_logging_level
    from service.settings import ray_temp_dir

    _quiet_ray()
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"PYTHONPATH": _project_root()}}
    # The node IP this driver registers: CREDIT_RAY_NODE_IP, or loopback for a private
    # cluster (so a single-machine study never talks over the network).
    # (127.0.0.2: Ray rewrites "127.0.0.1" into the outward IP; the rest of 127/8 it keeps)
    node_ip = os.environ.get("CREDIT_RAY_NODE_IP") or (None if address else "127.0.0.2")
    extra = {"_node_ip_address": node_ip} if node_ip else {}
    extra["logging_level"] = ray_logging_level()  # ray.init resets the "ray" logger's level
    # ray.init replaces a driver's SIGTERM handler with sys.exit; keep the caller's own.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, **extra)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=str(ray_temp_dir()), log_to_driver=False, runtime_env=runtime_env,
                 **extra)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def _leave_ray() -> None:
    """Disconnect (or, for a private cluster, stop) Ray: the driver's trial actors die."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _quiet_ray() -> None:
    """Our progress line replaces Tune's tables; its snapshot warnings are noise here."""
    import logging

    import optuna  # noqa: F401 -- imported first, so that its INFO lines can be silenced

    from service.quiet import quiet_third_party, verbose

    quiet_third_party()
    if verbose():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failed trial is part of a study's normal life: its reason goes to MLflow and the
    # result, not as a traceback on the user's terminal.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _make_searcher(spec: StudySpec, space: SearchSpace, storage):
    """OptunaSearch that keeps early-stopped trials out of the completed set.

    It keeps OptunaSearch's own bookkeeping (``_ot_trials``, ``_completed_trials``,
    ``_ot_study``): a public ask-and-tell ``Searcher`` (commit a23f001) made the resume
    test fail in full-file runs (an extra trial after a restore), so it is not used yet.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    epochs = spec.epochs

    def told(number: int) -> bool:  # finished in storage (told before a driver restart)
        study_id = storage.get_study_id_from_name(spec.name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return storage.get_trial(trial_id).state.is_finished()

    class CreditOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            params = super().suggest(trial_id)
            if params is not None:
                self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
            return params

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            if told(ot_trial.number):
                self._completed_trials.add(trial_id)
                return
            value = None if result is None else result.get(self.metric)
            if error or value is None or not math.isfinite(float(value)):
                state, value = optuna.trial.TrialState.FAIL, None
            elif int(result.get("epoch", epochs)) < epochs:
                state, value = optuna.trial.TrialState.PRUNED, None  # stopped by ASHA
            else:
                state = optuna.trial.TrialState.COMPLETE
            self._ot_study.tell(ot_trial, value, state=state)
            self._completed_trials.add(trial_id)

    return CreditOptunaSearch(
        space=space.to_optuna(), metric=spec.objective.metric, mode=spec.objective.mode,
        sampler=make_sampler(spec.sampler, spec.seed), study_name=spec.name, storage=storage,
    )


class _StudyMonitor:
    """Driver-side Tune callback + stopper: counts, best so far, the failure budget."""

    def __init__(self, spec: StudySpec, progress: ProgressFn | None):
        from ray.tune import Callback
        from ray.tune.stopper import Stopper

        self.spec = spec
        self.progress = progress
        self.failed: dict[str, str] = {}
        self.best: float | None = None
        self.trials: list = []  # Tune's trials, in the order of its ResultGrid
        monitor = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                monitor.seen(trials, result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                monitor.seen(trials, trial.last_result)

            def on_trial_error(self, iteration, trials, trial, **info):
                monitor.failed[trial.trial_id] = _error_text(trial)
                monitor.seen(trials, None)

            def on_experiment_end(self, trials, **info):
                monitor.trials = list(trials)

        class _Stopper(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                limit = monitor.spec.max_failed_trials
                from service.failures import infrastructure_verdict

                return (limit is not None and len(monitor.failed) > limit
                        or infrastructure_verdict(monitor.failed, limit) is not None)

        self.callback = _Callback()
        self.stopper = _Stopper()

    def seen(self, trials, result) -> None:
        obj = self.spec.objective
        if result and int(result.get("epoch", 0)) >= self.spec.epochs:
            value = result.get(obj.metric)
            if value is not None and math.isfinite(value):
                better = self.best is None or (value < self.best if obj.mode == "min"
                                               else value > self.best)
                self.best = value if better else self.best
        if self.progress is not None:
            self.progress({"counts": _counts_from_tune(trials, self.spec.epochs),
                           "best": self.best, "metric": obj.metric,
                           "max_trials": self.spec.max_trials})



def _counts_from_tune(trials, epochs: int) -> dict[str, int]:
    counts = trial_counts()
    for t in trials:
        if t.status == "ERROR":
            counts["failed"] += 1
        elif t.status == "TERMINATED":
            done = int((t.last_result or {}).get("epoch", 0))
            counts["complete" if done >= epochs else "pruned"] += 1
        elif t.status in ("RUNNING",):
            counts["running"] += 1
        else:
            counts["pending"] += 1
    return counts


def _new_tuner(spec, space, storage, trainable, monitor, tune_store):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    searcher = ConcurrencyLimiter(_make_searcher(spec, space, storage),
                                  max_concurrent=spec.parallel_trials)
    if spec.early_stopping:
        es = spec.early_stopping if isinstance(spec.early_stopping, EarlyStopping) \
            else EarlyStopping()
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.epochs,
                                  grace_period=min(es.grace_period, spec.epochs),
                                  reduction_factor=es.reduction_factor)
    else:
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
            callbacks=[monitor.callback], stop=monitor.stopper,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
