"""The search machinery of a study: Ray connection, Optuna sampler and searcher
(``service.searcher``), the driver-side monitor (``service.monitor``) and the Tune
``Tuner``."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace
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


#: Seconds between two saves (and uploads to the storage) of a study's Tune experiment
#: state: its trials and their latest checkpoints, the searcher. Tune's defaults: 10 s
#: (saves) and 300 s (uploads).
EXPERIMENT_SAVE_PERIOD_S = 2
#: Checkpoints kept per trial: a trial may write this many since the last upload of the
#: experiment state before the one that state names is deleted.
CHECKPOINTS_KEPT = 5


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
    """Optuna's ask-and-tell behind Tune's ``Searcher`` (early-stopped trials PRUNED)."""
    from service.searcher import OptunaAskTell

    return OptunaAskTell(space=space.to_optuna(), metric=spec.objective.metric,
                         mode=spec.objective.mode, study_name=spec.name, storage=storage,
                         sampler=spec.sampler, seed=spec.seed, epochs=spec.epochs,
                         max_trials=spec.max_trials)


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
            # The experiment state a restore reads names each trial's checkpoint as of
            # its last upload to the storage: upload it every few seconds (Tune's default
            # is 5 minutes), and keep enough checkpoints that the one it names still
            # exists after a crash (Tune deletes a trial's oldest beyond num_to_keep).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            sync_config=tune.SyncConfig(sync_period=EXPERIMENT_SAVE_PERIOD_S),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
