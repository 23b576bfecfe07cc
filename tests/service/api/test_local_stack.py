"""Processes the local stack starts get no API secret in their environment."""

from __future__ import annotations

import os
from pathlib import Path

from service.local.stack import LocalRayHead, MlflowServer, OptunaDashboard, session_members
from service.settings import SECRET_VARS, child_env


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def test_child_env_drops_the_api_tokens(monkeypatch):
    monkeypatch.setenv("CREDIT_API_TOKENS", "secret-a,secret-b")
    env = child_env(EXTRA="1")
    assert not set(SECRET_VARS) & set(env) and env["EXTRA"] == "1"
    ray_env = LocalRayHead(num_cpus=1, temp_dir=Path("/tmp/unused")).env()
    assert "CREDIT_API_TOKENS" not in ray_env and ray_env["RAY_AUTH_MODE"] == "token"
    assert ray_env["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_the_mlflow_server_process_has_no_api_tokens(monkeypatch, tmp_path):
    monkeypatch.setenv("CREDIT_API_TOKENS", "secret-a,secret-b")
    server = MlflowServer(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art",
                          log_file=tmp_path / "mlflow.log").start()
    try:
        pids = session_members(server.proc.pid)
        assert pids  # the server and its workers
        for pid in pids:
            environ = _environ(pid)
            assert "CREDIT_API_TOKENS" not in environ, pid
            assert "secret-a" not in " ".join(environ.values())
            assert environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    finally:
        server.stop()


def test_the_optuna_dashboard_process_has_no_api_tokens(monkeypatch, tmp_path):
    monkeypatch.setenv("CREDIT_API_TOKENS", "secret-a,secret-b")
    dashboard = OptunaDashboard(f"sqlite:///{tmp_path / 'optuna.db'}",
                                log_file=tmp_path / "optuna.log").start()
    try:
        pids = session_members(dashboard.proc.pid)
        assert pids
        for pid in pids:
            environ = _environ(pid)
            assert "CREDIT_API_TOKENS" not in environ, pid
            assert "secret-a" not in " ".join(environ.values())
    finally:
        dashboard.stop()


#: a session leader that ignores SIGTERM and forks a sleeping child every 5 ms, as a
#: raylet starts workers or a server replaces its dead workers while being stopped
FORKER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)
        os._exit(0)
    time.sleep(0.005)
"""


def test_stopping_a_session_leaves_nothing_forked_meanwhile():
    import subprocess
    import sys
    import time

    from service.local.stack import stop_session

    proc = subprocess.Popen([sys.executable, "-c", FORKER], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(session_members(proc.pid)) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(session_members(proc.pid)) >= 20
        stop_session(proc.pid, grace_s=1.0)
        proc.wait(timeout=10)
        time.sleep(0.5)
        assert session_members(proc.pid) == []
    finally:
        for pid in session_members(proc.pid):
            os.kill(pid, 9)
