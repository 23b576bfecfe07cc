"""Keep third-party log lines and warnings out of our commands' output.

Our commands print their own progress and one-line errors; Ray's start-up INFO and
token WARNING lines, its ``(raylet) ...`` notices that a worker or node died (the
driver's own line says which trial restarts and why), Optuna's ``[I ...] A new study
created`` and library warnings are noise there. ``credit --verbose`` (or
``CREDIT_VERBOSE=1``, which drivers started by the service inherit) lets them through.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any

VERBOSE_ENV = "CREDIT_VERBOSE"

#: Loggers whose INFO lines are theirs, not ours.
_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air", "optuna", "mlflow", "alembic",
            "httpx", "uvicorn.access")

#: What Ray's notices of a dead worker or node say (the cluster's error messages, which
#: every driver prints as ``(raylet) ...``): a node missed its heartbeats (the GCS), a
#: worker process died (the raylet), a raylet died (``ray/_private/process_watcher.py``).
RAY_DEATH_NOTICES = ("has been marked dead because the detector has missed too many "
                     "heartbeats", "A worker died or was killed while executing a task",
                     "Raylet is terminated. Termination is unexpected.")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """Remember ``--verbose`` in the environment, so subprocesses and drivers see it."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def ray_logging_level() -> int:
    """For ``ray.init(logging_level=...)``, which resets the ``ray`` logger's level."""
    return logging.INFO if verbose() else logging.ERROR


def quiet_third_party() -> None:
    """Raise the third-party loggers to WARNING/ERROR, silence Optuna's INFO lines and
    Ray's notices of dead workers and nodes, unless verbose. Call it before (or right
    after) importing those libraries."""
    if verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name.startswith("ray")
                                         else logging.WARNING)
    if "optuna" in sys.modules:  # its own handler ignores the logging levels above
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "ray._private.worker" in sys.modules:
        _quiet_ray_notices(sys.modules["ray._private.worker"])


def ray_death_notice(message: str) -> bool:
    """Whether ``message``, which Ray prints on the driver as ``(raylet) ...``, only says
    that a worker or node died: the driver's own line tells which trial restarts (or
    fails) and why."""
    return any(notice in message for notice in RAY_DEATH_NOTICES)


def _quiet_ray_notices(worker: Any) -> None:
    """Drop Ray's notices of dead workers and nodes from what its driver prints.

    Every driver prints the cluster's error messages (``(raylet) ...`` on stdout) from a
    thread ``ray.init`` starts, whatever ``log_to_driver`` says, and no setting turns
    them off: that thread calls ``print_to_stdstream`` of ``ray._private.worker``
    (``worker``) each time, so a wrapper there filters them. Once per process."""
    show = worker.print_to_stdstream
    if getattr(show, "quiet_notices", False):
        return

    @functools.wraps(show)
    def print_to_stdstream(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if data.get("pid") == "raylet":
            lines = [m for m in data.get("lines", []) if not ray_death_notice(m)]
            if not lines:
                return
            data = {**data, "lines": lines}
        show(data, *args, **kwargs)

    print_to_stdstream.quiet_notices = True
    worker.print_to_stdstream = print_to_stdstream
