"""Shared defaults: where local state lives, what a child process inherits.

Everything sits under ``CREDIT_HOME`` (default ``~/.credit``) unless a URL says
otherwise, so one directory holds a user's whole local installation: the study
database, MLflow store and artifacts, Optuna storage, Ray's results. ``credit search``,
the study runner and the API (``service.api.config.ApiSettings``) all take their
defaults from here.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "~/.credit"

#: Environment variables that hold the API's secrets: never handed to a child process
#: (one that needs MLflow's account, the Ray head, gets it by name).
SECRET_VARS = ("CREDIT_API_TOKENS", "CREDIT_MLFLOW_PASSWORD", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_AUTH_ADMIN_PASSWORD")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a process we start (Ray, MLflow, a study's driver): ours
    without ``SECRET_VARS``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env.update(extra)
    return env


def credit_home() -> Path:
    home = Path(os.environ.get("CREDIT_HOME") or DEFAULT_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def tracking_uri_under(home: Path) -> str:
    """MLflow: ``MLFLOW_TRACKING_URI``, else a sqlite store in ``home``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def optuna_storage_under(home: Path) -> str:
    return f"sqlite:///{home / 'optuna.db'}"


def database_url_under(home: Path) -> str:
    """The API's study records."""
    return f"sqlite:///{home / 'service.db'}"


def default_tracking_uri() -> str:
    return tracking_uri_under(credit_home())


def default_artifact_root() -> str:
    return (credit_home() / "mlartifacts").as_uri()


def default_optuna_storage() -> str:
    return optuna_storage_under(credit_home())


def ray_temp_dir() -> Path:
    # Ray's unix socket paths must stay short (107 bytes): keep the temp dir shallow.
    path = Path(os.environ.get("CREDIT_RAY_TMP") or f"/tmp/credit-ray-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path
