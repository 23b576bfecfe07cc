"""The local stack behind ``credit serve --local``: a private Ray head and an MLflow server.

Both run on loopback only and each is started in its own session (process group),
so stopping it ends exactly its processes — never ``ray stop``, which would kill
every Ray process of the machine, other users' clusters included.

Ray rewrites ``127.0.0.1`` (and ``localhost``) into the machine's outward IP, in
``--node-ip-address`` as in addresses; ``127.0.0.2`` is loopback too and left
alone, so the head registers, and its drivers join, at ``127.0.0.2``. Every port a
node opens is chosen here, so two clusters on one machine never collide.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.settings import child_env
from trainables.errors import CreditError

NODE_IP = "127.0.0.2"
BIN = Path(sys.executable).parent


class StackError(CreditError):
    """A part of the local stack did not start (the message says which and why)."""


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port chosen by the kernel."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise StackError("no free port")  # pragma: no cover


def wait_http(url: str, timeout_s: float, headers: dict | None = None,
              alive=lambda: True, statuses: tuple[int, ...] = (200,)) -> None:
    """Until ``url`` answers 200 (or another of ``statuses``; or ``timeout_s`` passes, or
    ``alive()`` turns false)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise StackError(f"{url}: the process serving it exited")
        try:
            r = httpx.get(url, headers=headers, timeout=2)
            if r.status_code in statuses:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as error:
            last = type(error).__name__
        time.sleep(0.3)
    raise StackError(f"{url} did not answer within {timeout_s:.0f} s ({last})")


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux /proc): a Ray head's daemons and the
    workers its raylet starts (each in its own process group, but in the session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid and pid != os.getpid() and alive(pid):
                pids.append(pid)
        except OSError:
            continue
    return pids


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_session(sid: int, grace_s: float = 10.0) -> None:
    """SIGTERM to every process of session ``sid``; SIGKILL to those left after ``grace_s``."""
    stop_processes(lambda: session_members(sid), grace_s)


def stop_processes(members: Callable[[], list[int]], grace_s: float = 10.0,
                   kill_wait_s: float = 10.0) -> None:
    """SIGTERM to the processes ``members()`` lists; SIGKILL to those left after
    ``grace_s``. ``members`` is asked again every 0.2 s, and a process that appears
    meanwhile (forked by one being stopped: a raylet starting a worker, a server
    replacing one) gets the same signal, so none is left behind by a race."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        signalled: set[int] = set()
        deadline = time.monotonic() + wait
        while True:
            pids = members()
            if not pids:
                return
            if time.monotonic() >= deadline:
                break
            for pid in set(pids) - signalled:
                signalled.add(pid)
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)


class LocalRayHead:
    """A one-node Ray cluster with its dashboard (Jobs API) and token authentication."""

    def __init__(self, num_cpus: int | None = None, num_gpus: int | None = None,
                 dashboard_port: int | None = None, token: str | None = None,
                 temp_dir: Path | None = None, log_file: Path | None = None,
                 extra_env: dict[str, str] | None = None):
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.num_gpus = num_gpus
        self.token = token or secrets.token_hex(32)
        # Ray's socket paths must stay short (107 bytes): a shallow, private temp dir
        self.temp_dir = temp_dir or Path(tempfile.mkdtemp(prefix=f"credit-{os.getuid()}-",
                                                          dir="/tmp"))
        self.port = free_port()
        self.dashboard_port = free_port(dashboard_port or 8265)
        self.log_file = log_file
        #: what every driver and trial inherits beside Ray's own (MLflow's account)
        self.extra_env = dict(extra_env or {})
        self.sid: int | None = None  # the session of `ray start` and all it starts

    @property
    def address(self) -> str:
        return f"{NODE_IP}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        return child_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                         RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true",
                         **self.extra_env)

    def start(self, timeout_s: float = 600.0) -> LocalRayHead:
        deadline = time.monotonic() + timeout_s
        args = [str(BIN / "ray"), "start", "--head", f"--port={self.port}",
                f"--node-ip-address={NODE_IP}", f"--num-cpus={self.num_cpus}",
                f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
        if self.num_gpus is not None:
            args.append(f"--num-gpus={self.num_gpus}")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(args, env=self.env(), start_new_session=True, stdout=out,
                                    stderr=subprocess.STDOUT)
            self.sid = proc.pid
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise StackError(f"ray start did not finish within {timeout_s:.0f} s") from None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        if code != 0:
            where = f" (see {self.log_file})" if self.log_file else ""
            raise StackError(f"ray start --head failed with exit code {code}{where}")
        headers = {"Authorization": f"Bearer {self.token}"}
        wait_http(f"{self.dashboard_url}/api/version", deadline - time.monotonic(), headers)
        self._wait_jobs_agent(deadline - time.monotonic(), headers)
        return self

    def _wait_jobs_agent(self, timeout_s: float, headers: dict) -> None:
        """The Jobs API takes submissions once the head's agent has registered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.dashboard_url}/api/v0/nodes?detail=false",
                              headers=headers, timeout=5)
                rows = r.json()["data"]["result"]["result"]
                if r.status_code == 200 and any(n.get("state") == "ALIVE" for n in rows):
                    return
            except (httpx.HTTPError, KeyError, TypeError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise StackError("the Ray head's node did not register in time")

    def stop(self) -> None:
        if self.sid is not None:
            stop_session(self.sid)
            self.sid = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


#: The MLflow server's environment: no job runner (MLflow 3's GenAI jobs: eight
#: ``huey_consumer`` processes that credit-search never uses, each a few % of a core).
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                     "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class MlflowAuth:
    """MLflow's ``basic-auth`` app for a server: its settings file
    (``mlflow_access.auth_file``), the password of its admin (the service's account:
    used at the first start of an empty users store) and the key of its CSRF tokens."""

    config_file: Path
    admin_password: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.config_file),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key}


class MlflowServer:
    """``mlflow server --workers 1`` on loopback: tracking REST API, UI, proxied artifacts;
    with ``auth``, MLflow's ``basic-auth`` app asks every request who is there."""

    def __init__(self, backend_store_uri: str, artifacts_dir: Path, port: int | None = None,
                 log_file: Path | None = None, auth: MlflowAuth | None = None):
        self.backend_store_uri = backend_store_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.port = free_port(port or 5000)
        self.log_file = log_file
        self.auth = auth
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600.0) -> MlflowServer:
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        hosts = f"127.0.0.1:{self.port},localhost:{self.port}"
        args = [str(BIN / "mlflow"), "server", "--workers", "1",
                "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", str(self.artifacts_dir),
                "--host", "127.0.0.1", "--port", str(self.port), "--allowed-hosts", hosts]
        env = dict(MLFLOW_SERVER_ENV)
        if self.auth is not None:
            args += ["--app-name", "basic-auth"]
            env.update(self.auth.env())
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(args, env=child_env(**env),
                                         start_new_session=True, stdout=out,
                                         stderr=subprocess.STDOUT)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        try:
            wait_http(f"{self.url}/health", timeout_s,
                      alive=lambda: self.proc is not None and self.proc.poll() is None)
        except StackError as error:
            self.stop()
            where = f" (see {self.log_file})" if self.log_file else ""
            raise StackError(f"mlflow server did not start: {error}{where}") from None
        return self

    def stop(self) -> None:
        _stop_child(self.proc)
        self.proc = None


class OptunaDashboard:
    """``optuna-dashboard`` on loopback over the study storage: importances, parallel
    coordinates, contour plots of the searched parameters; ``study_url`` opens one study.
    With ``owners_file`` (where the API has named owners) it runs behind its gate, for
    admins only (``service.api.dashboard_gate``)."""

    def __init__(self, storage: str, port: int | None = None, log_file: Path | None = None,
                 owners_file: Path | None = None):
        self.storage = storage
        self.port = free_port(port or 8080)
        self.log_file = log_file
        self.owners_file = owners_file
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600.0) -> OptunaDashboard:
        import optuna

        # optuna-dashboard does not create the schema of a new storage: do it first
        optuna.storages.RDBStorage(self.storage, engine_kwargs={"connect_args": {
            "timeout": 60}} if self.storage.startswith("sqlite") else {})
        args = [str(BIN / "optuna-dashboard"), self.storage, "--host", "127.0.0.1",
                "--port", str(self.port)]
        if self.owners_file is not None:
            args = [sys.executable, "-m", "service.api.dashboard_gate", self.storage,
                    "--owners", str(self.owners_file), "--host", "127.0.0.1",
                    "--port", str(self.port)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(args, env=child_env(), start_new_session=True,
                                         stdout=out, stderr=subprocess.STDOUT)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        try:
            wait_http(f"{self.url}/dashboard", timeout_s,
                      alive=lambda: self.proc is not None and self.proc.poll() is None,
                      statuses=(200,) if self.owners_file is None else (401,))
        except StackError as error:
            self.stop()
            raise StackError(f"optuna-dashboard did not start: {error}") from None
        return self

    def stop(self) -> None:
        _stop_child(self.proc)
        self.proc = None


# ------------------------------------------------------------------ starting together

def _stop_child(proc: subprocess.Popen | None) -> None:
    """Stop a server we started in its own session, and reap it."""
    if proc is None:
        return
    stop_session(proc.pid)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
