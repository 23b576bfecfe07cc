"""A node's warm driver (``service.runner.warm``) and a job's entrypoint
(``service.runner.launch``): real processes, a real socket, real forks.

The warm driver outlives no raylet: here the raylet it watches is a process named
``raylet`` (a copy of ``sleep``), which the tests kill to end it. Its drivers run
``service.runner.job``'s ``main``: with no spec it exits 2; with a FIFO for a spec file
it waits, which is how a long study's driver is had here without Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.runner import launch

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ("import sys; from pathlib import Path; from service.runner import launch\n"
          "code = launch.run_warm(Path(sys.argv[1]), sys.argv[2:])\n"
          "print('no warm driver', file=sys.stderr) if code is None else launch.exit_as(code)\n"
          "sys.exit(99)")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def raylet(tmp_path):
    fake = tmp_path / "raylet"
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen([str(fake), "600"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def warm(tmp_path, raylet):
    """A warm driver on ``tmp_path/w/x.sock`` watching ``raylet``; (process, socket, log)."""
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    sock, log = folder / "x.sock", folder / "x.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.runner.warm", str(sock),
                                 str(raylet.pid)], cwd=ROOT, env=env, stdout=out, stderr=out)
    assert _wait(lambda: "ready" in log.read_text() or proc.poll() is not None, 120), \
        log.read_text()
    assert proc.poll() is None, log.read_text()
    yield proc, sock, log
    proc.kill()
    proc.wait()


def _client(sock: Path, out: Path, *argv: str, env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ if env is None else env)
    with open(out, "wb") as f:
        return subprocess.Popen([sys.executable, "-c", CLIENT, str(sock), *argv], cwd=ROOT,
                                env=env, stdout=f, stderr=f)


def _driver_pid(log: Path, n: int) -> int:
    """The pid of the warm driver's n-th fork (1-based), from its log."""
    assert _wait(lambda: log.read_text().count(" started") >= n), log.read_text()
    lines = [ln for ln in log.read_text().splitlines() if ln.endswith(" started")]
    return int(lines[n - 1].split()[-2])


def test_a_fork_is_the_jobs_driver_with_its_streams_env_and_exit_code(warm, tmp_path):
    proc, sock, log = warm
    out = tmp_path / "job.log"
    env = {k: v for k, v in os.environ.items() if k != "CREDIT_STUDY_SPEC"}
    client = _client(sock, out, env=env)
    assert client.wait(60) == 2, out.read_text()
    assert "CREDIT_STUDY_SPEC is not set" in out.read_text()
    # its environment is the job's: a spec that is not JSON fails in the driver, exit 1
    client = _client(sock, out, env={**env, "CREDIT_STUDY_SPEC": "{not json"})
    assert client.wait(60) == 1
    assert "ValidationError" in out.read_text()
    assert proc.poll() is None  # one driver's failure never ends the warm one
    assert log.read_text().count("started") == 2


def _waiting_driver(sock: Path, log: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A job whose driver waits (its spec file is a FIFO nobody writes): (entrypoint,
    the driver's pid)."""
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    client = _client(sock, tmp_path / "job.log", str(fifo))
    return client, _driver_pid(log, 1)


def test_sigterm_reaches_the_driver_and_the_entrypoint_exits_as_it_did(warm, tmp_path):
    _, sock, log = warm
    client, driver = _waiting_driver(sock, log, tmp_path)
    assert _alive(driver) and client.poll() is None
    client.send_signal(signal.SIGTERM)  # as `ray job stop` does
    assert client.wait(30) == -signal.SIGTERM
    assert _wait(lambda: not _alive(driver), 10)


def test_a_killed_entrypoint_takes_its_driver_along(warm, tmp_path):
    proc, sock, log = warm
    client, driver = _waiting_driver(sock, log, tmp_path)
    client.kill()  # Ray's SIGKILL after its grace period
    client.wait()
    assert _wait(lambda: not _alive(driver), 10), "the driver outlived its job"
    assert proc.poll() is None


def test_the_warm_driver_ends_with_its_raylet_and_takes_no_second_place(warm, raylet, tmp_path):
    proc, sock, log = warm
    second = subprocess.run([sys.executable, "-m", "service.runner.warm", str(sock),
                             str(raylet.pid)], cwd=ROOT, timeout=60, capture_output=True)
    assert second.returncode == 0 and proc.poll() is None  # the lock: one per key
    client, driver = _waiting_driver(sock, log, tmp_path)
    raylet.kill()
    assert proc.wait(15) == 0
    assert "raylet is gone" in log.read_text()
    assert not sock.exists()
    assert _wait(lambda: not _alive(driver), 10)
    assert client.wait(10) != 0


def test_no_warm_driver_means_the_cold_way(tmp_path):
    """No socket: ``run_warm`` says so (the entrypoint then execs the driver itself).
    This test process has no raylet above it, so it has no warm driver's socket; a
    folder others can read is never used."""
    assert launch.run_warm(tmp_path / "none.sock", []) is None
    assert launch.socket_path() is None
    assert launch.raylet_pid() is None
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert launch.warm_dir({launch.DIR_VAR: str(shared)}) is None
    assert launch.warm_dir({launch.DIR_VAR: str(tmp_path / "mine")}) == tmp_path / "mine"
    assert not launch.enabled({launch.SWITCH_VAR: "0"}) and launch.enabled({})
    env = {"CREDIT_STUDY_SPEC": "{}", "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "PATH": "/bin"}
    assert launch.node_env(env) == {"PATH": "/bin"}


def _reads_environment(node) -> bool:
    """Whether code run by ``node`` reads the environment (``os.environ``, ``os.getenv``;
    ``os.environ.setdefault(...)``, a default set for every process, is not a read)."""
    import ast

    writes = {id(sub.func.value) for sub in ast.walk(node)
              if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
              and sub.func.attr == "setdefault"}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in ("environ", "getenv", "environb") \
                and isinstance(sub.value, ast.Name) and sub.value.id == "os" \
                and id(sub) not in writes:
            return True
    return False


def test_no_module_of_ours_reads_the_environment_when_it_is_imported():
    """A warm process imports our modules once, under its own environment, and its forks
    get their job's: a module that read a setting at import would keep the warm
    process's value. So none does (the key, ``launch.KEY_VARS``, names only what Python
    and Ray read at import). Module and class bodies are what an import runs; default
    values of arguments too."""
    import ast

    offenders = []
    for package in ("service", "trainables", "search_spaces"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            pending = list(tree.body)
            while pending:
                node = pending.pop()
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defaults = [*node.args.defaults, *node.args.kw_defaults, *node.decorator_list]
                    if any(d is not None and _reads_environment(d) for d in defaults):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                elif isinstance(node, ast.ClassDef):
                    pending.extend(node.body)
                elif _reads_environment(node):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
