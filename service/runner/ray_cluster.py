"""The driver's Ray: join the cluster at ``RAY_ADDRESS`` or start a private one, leave
it, and keep Ray's and Tune's own output off the user's terminal."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import optuna  # noqa: F401 -- imported before quiet_ray, so that its INFO lines can be silenced
import ray

from service.quiet import quiet_third_party, ray_logging_level, verbose
from service.settings import ray_temp_dir


def connect_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a private local one (own temp dir)."""
    if ray.is_initialized():
        return
    quiet_ray()
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
