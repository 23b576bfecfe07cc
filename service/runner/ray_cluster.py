"""The driver's Ray: join the cluster at ``RAY_ADDRESS`` or start a private one, leave
it, and keep Ray's and Tune's own output off the user's terminal.

The driver's workers (its trials' Tune actors, the pre-flight checks) start with no
runtime environment: Ray starts a worker with one through ``setup_worker.py``, a
Python process that imports Ray before it execs the worker (measured here: 0.5-0.7 s
more per actor, on every trial's critical path). What a runtime environment would
give them instead travels with their calls: the project's folder on their
``sys.path`` (the job's ``_py_driver_sys_path``), and the environment a study's job
was submitted with (``worker_env``: the service's settings), which the trainables
and the checks set first thing (``worker_code.apply_env``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import optuna  # noqa: F401 -- imported before quiet_ray, so that its INFO lines can be silenced
import ray
from ray.job_config import JobConfig

from service.quiet import quiet_third_party, ray_logging_level, verbose
from service.runner.launch import PER_JOB
from service.settings import ray_temp_dir

#: What a Ray Job's supervisor gives its driver: the job's runtime environment and
#: metadata, as JSON (``ray._private.runtime_env.constants``).
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_worker_env: dict[str, str] = {}


def connect_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a private local one (own temp dir)."""
    if ray.is_initialized():
        return
    quiet_ray()
    address = os.environ.get("RAY_ADDRESS")
    _worker_env.clear()
    _worker_env.update(_job_env_off_workers())
    job_config = JobConfig(_py_driver_sys_path=[_project_root()])
    # The node IP this driver registers: CREDIT_RAY_NODE_IP, or loopback for a private
    # cluster (so a single-machine study never talks over the network).
    # (127.0.0.2: Ray rewrites "127.0.0.1" into the outward IP; the rest of 127/8 it keeps)
    node_ip = os.environ.get("CREDIT_RAY_NODE_IP") or (None if address else "127.0.0.2")
    extra = {"_node_ip_address": node_ip} if node_ip else {}
    extra["logging_level"] = ray_logging_level()  # ray.init resets the "ray" logger's level
    # ray.init replaces a driver's SIGTERM handler with sys.exit; keep the caller's own.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=False, job_config=job_config, **extra)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=str(ray_temp_dir()), log_to_driver=False, job_config=job_config,
                 **extra)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def worker_env() -> dict[str, str]:
    """The variables this driver's job was submitted with that its workers need (the
    service's settings: ``CREDIT_HOME``, ``CREDIT_DATA_DIR``, ...), for each of them to
    set (``worker_code.apply_env``); empty for a driver that is no Ray Job (its workers
    have their node's environment, as before)."""
    return dict(_worker_env)


def _job_env_off_workers() -> dict[str, str]:
    """The job's ``env_vars``, taken out of the runtime environment its supervisor hands
    this driver for its workers (the rest of it, if any, stays); without Ray's own
    (``RAY_*``: the supervisor's niceness, its GPU switches) and the study's spec."""
    text = os.environ.get(JOB_CONFIG_VAR)
    if not text:
        return {}
    try:
        config = json.loads(text)
        runtime_env = dict(config.get("runtime_env") or {})
    except (ValueError, TypeError, AttributeError):
        return {}  # not Ray's: leave it to ray.init
    env = runtime_env.pop("env_vars", None) or {}
    config["runtime_env"] = runtime_env
    os.environ[JOB_CONFIG_VAR] = json.dumps(config)
    return {k: str(v) for k, v in env.items()
            if k not in PER_JOB and not k.startswith("RAY_") and "VISIBLE_DEVICES" not in k}


def leave_ray() -> None:
    """Disconnect (or, for a private cluster, stop) Ray: the driver's trial actors die."""
    if ray.is_initialized():
        ray.shutdown()


def quiet_ray() -> None:
    """Our progress line replaces Tune's tables; its snapshot warnings are noise here."""
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
    return str(Path(__file__).resolve().parents[2])
