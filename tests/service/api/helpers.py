"""Helpers of the API tests (importable; the fixtures are in conftest.py): the token the
test servers accept, ``credit serve`` as a subprocess, a tiny study, polling a status."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.local.stack import NODE_IP, free_port, stop_session, wait_http

TOKEN = "test-token-0123456789"
OTHER_TOKEN = "second-token-abcdef"
TINY = {"epochs": 1, "batches_per_epoch": 5, "dataset": "mnist-5k"}


class ApiServer:
    """``credit serve`` as a subprocess; ``kill()`` it and ``start()`` it again at will."""

    def __init__(self, home: Path, env: dict[str, str], log: Path):
        self.home = home
        self.port = free_port()
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "service.db"

    def start(self, ready: str = "/healthz") -> ApiServer:
        """Start it and wait until ``ready`` answers 200 (``/livez`` for a server whose
        Ray or MLflow is meant to be down)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}{ready}", 90,
                  alive=lambda: self.proc is not None and self.proc.poll() is None)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, as a crash."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_session(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def rows(self) -> list[tuple]:
        """The study table as stored (id, name, status, job_id)."""
        with sqlite3.connect(self.db_path, timeout=30) as con:
            return con.execute("select id, name, status, job_id from studies").fetchall()

    def rows_by_name(self) -> dict[str, tuple]:
        return {row[1]: row for row in self.rows()}


def wait_status(client: httpx.Client, study: str, statuses: tuple[str, ...],
                timeout_s: float = 240.0, predicate=None) -> dict:
    """Poll GET /studies/{study} until its status is one of ``statuses`` (and ``predicate``)."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/studies/{study}")
        if r.status_code == 200:
            body = r.json()
            if body["status"] in statuses and (predicate is None or predicate(body)):
                return body
        time.sleep(0.5)
    raise AssertionError(f"study {study} not {statuses} after {timeout_s} s: {body}")


def api_env(home: Path, dashboard: str, mlflow_url: str, **settings: str) -> dict[str, str]:
    """The environment of a test API server on the session's Ray cluster and MLflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_")}
    env.update({
        "CREDIT_HOME": str(home),
        "CREDIT_API_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "CREDIT_RAY_DASHBOARD_URL": dashboard,
        "CREDIT_RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"],
        "CREDIT_RAY_NODE_IP": NODE_IP,
        "CREDIT_MLFLOW_TRACKING_URI": mlflow_url,
        "CREDIT_SYNC_INTERVAL_S": "1",
        "CREDIT_LOST_JOB_GRACE_S": "600",
    })
    env.update({f"CREDIT_{k.upper()}": v for k, v in settings.items()})
    return env


def start_api(tmp_path_factory, name: str, ray_dashboard: str, mlflow_url: str,
              **settings: str) -> ApiServer:
    """A real ``credit serve`` in its own home, on the shared cluster and MLflow server."""
    home = tmp_path_factory.mktemp(name)
    return ApiServer(home, api_env(home, ray_dashboard, mlflow_url, **settings),
                     home / "serve.log").start()


def bare_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a test API server with no Ray cluster and no MLflow server: their
    addresses are free loopback ports nothing listens on (each refuses at once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_")}
    env.update({
        "CREDIT_HOME": str(home),
        "CREDIT_API_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "CREDIT_RAY_DASHBOARD_URL": f"http://127.0.0.1:{free_port()}",
        "CREDIT_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "CREDIT_SYNC_INTERVAL_S": "1",
    })
    env.update({f"CREDIT_{k.upper()}": v for k, v in settings.items()})
    return env


def start_bare_api(home: Path, **settings: str) -> ApiServer:
    """A real ``credit serve`` with neither Ray nor MLflow (``bare_env``), started once
    it is alive (``/livez``: its health is degraded by design)."""
    home.mkdir(parents=True, exist_ok=True)
    return ApiServer(home, bare_env(home, **settings), home / "serve.log").start("/livez")


def serve_app(app) -> tuple[str, object, object]:
    """(base URL, server, thread): ``app`` served by uvicorn on a free loopback port in a
    thread of this process, once it has started. Stop it: ``server.should_exit = True``
    and join the thread."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.1)
    return f"http://127.0.0.1:{server.config.port}", server, thread
