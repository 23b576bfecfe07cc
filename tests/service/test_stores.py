"""A database that cannot be used is one line at start — exit 2, no traceback — and
leaves nothing behind: no MLflow run RUNNING, no study name taken."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.local.stack import free_port
from service.records.stores import StoreUnavailable, check_database

REPO = Path(__file__).resolve().parents[2]


def _credit(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CREDIT_"))}
    env.update(CREDIT_HOME=str(home), PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI="")
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_driver_is_named_with_its_install_line():
    with pytest.raises(StoreUnavailable, match=r"CREDIT_DATABASE_URL=postgresql\+pg8000://"
                                               r"u:\*\*\*@db/x: its database driver is not "
                                               r"installed \(pg8000\)"):
        check_database("CREDIT_DATABASE_URL", "postgresql+pg8000://u:secret@db/x")


def test_an_unreachable_postgresql_is_one_line_without_its_password():
    url = f"postgresql+psycopg://u:secret@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(StoreUnavailable) as info:
        check_database("CREDIT_OPTUNA_STORAGE", url)
    message = str(info.value)
    assert message.startswith("CREDIT_OPTUNA_STORAGE=postgresql+psycopg://u:***@127.0.0.1:")
    assert "unreachable" in message and "secret" not in message and "\n" not in message


def test_credit_search_with_an_unreachable_optuna_database_exits_2_and_keeps_the_name(
        tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/optuna"
    r = _credit(tmp_path, "search", "--space", "mnist-fc-backprop", "--name", "pg-down",
                "--trials", "1", "--epochs", "1", "--storage", url)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("credit: error: --storage (Optuna)=postgresql+psycopg://")
    assert "unreachable" in r.stderr
    runs = tmp_path / "mlflow.db"
    if runs.exists():  # the tracking store may exist; the study has no run in it
        with sqlite3.connect(runs) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0


def test_credit_serve_with_a_missing_driver_exits_2_with_one_line(tmp_path):
    env_url = "postgresql+pg8000://postgres@127.0.0.1:5432/service"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CREDIT_"))}
    env.update(CREDIT_HOME=str(tmp_path), PYTHONPATH=str(REPO), CREDIT_DATABASE_URL=env_url,
               CREDIT_INSECURE="1", CREDIT_RAY_DASHBOARD_URL=f"http://127.0.0.1:{free_port()}")
    r = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port",
                        str(free_port())], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("credit: error: CREDIT_DATABASE_URL=postgresql+pg8000://"
                                "postgres@127.0.0.1:5432/service: its database driver is not "
                                "installed (pg8000)")
