"""Where local state lives: the study database, MLflow store, Optuna storage, Ray temp dir.

Everything sits under ``CREDIT_HOME`` (default ``~/.credit``) unless a URL says
otherwise, so one directory holds a user's whole local installation.
"""

from __future__ import annotations

import os
from pathlib import Path


def credit_home() -> Path:
    home = Path(os.environ.get("CREDIT_HOME") or "~/.credit").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{credit_home() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (credit_home() / "mlartifacts").as_uri()


def default_optuna_storage() -> str:
    return f"sqlite:///{credit_home() / 'optuna.db'}"


def tune_results_dir() -> Path:
    return credit_home() / "ray_results"


def ray_temp_dir() -> Path:
    # Ray's unix socket paths must stay short (107 bytes): keep the temp dir shallow.
    path = Path(os.environ.get("CREDIT_RAY_TMP") or f"/tmp/credit-ray-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path
