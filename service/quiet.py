"""Keep third-party log lines and warnings out of our commands' output.

Our commands print their own progress and one-line errors; Ray's start-up INFO and
token WARNING lines, Optuna's ``[I ...] A new study created`` and library warnings are
noise there. ``credit --verbose`` (or ``CREDIT_VERBOSE=1``, which drivers started by
the service inherit) lets them through.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "CREDIT_VERBOSE"

#: Loggers whose INFO lines are theirs, not ours.
_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air", "optuna", "mlflow", "alembic",
            "httpx", "uvicorn.access")


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
    """Raise the third-party loggers to WARNING/ERROR and silence Optuna's INFO lines,
    unless verbose. Call it before (or right after) importing those libraries."""
    if verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name.startswith("ray")
                                         else logging.WARNING)
    import sys

    if "optuna" in sys.modules:  # its own handler ignores the logging levels above
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
