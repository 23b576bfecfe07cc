"""A study's Ray Job entrypoint: ``python -m service.runner.launch [ARGS]``.

It hands the study to this node's warm driver (``service.runner.warm``: a process that
has imported the study runner once and forks one driver per study), passing it its
arguments, environment, working directory and standard streams (the job's log). It
stays the job's process for Ray: it forwards SIGTERM and SIGINT (``ray job stop``) to
the driver, and exits as the driver exited. Killed itself (SIGKILL after Ray's grace
period), the warm process kills the driver: a study's driver never outlives its job.

When there is no warm driver yet on this node, it starts one in the background and
runs this study the cold way: it becomes ``python -m service.runner.job`` (exec), as
every study did before. ``CREDIT_WARM_DRIVERS=0`` always does that.

Standard library only: this process starts once per study and must cost nothing.
The warm driver of a node is keyed by the node's raylet (an ancestor of every Job's
entrypoint), this Python, the project's source files (path, size, mtime: edited code
gets a new warm driver) and the few variables that change what an import does
(``KEY_VARS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

#: Set to "0" (or "false", "no", "off"): every study's driver starts cold.
SWITCH_VAR = "CREDIT_WARM_DRIVERS"
#: Where the warm drivers' sockets, locks and logs are (a folder only this user reaches).
DIR_VAR = "CREDIT_WARM_DIR"
#: Seconds a warm process with no fork waits for a request before it exits (default 600).
IDLE_VAR = "CREDIT_WARM_IDLE_S"
#: Environment variables set per job, not per node: not part of a warm driver's key,
#: and not in its own environment (each driver gets its job's whole environment).
PER_JOB = ("CREDIT_STUDY_SPEC", "RAY_JOB_CONFIG_JSON_ENV_VAR", "PWD", "OLDPWD", "SHLVL", "_")
PER_JOB_PREFIXES = ("RAY_JOB_",)
#: The variables a warm process's key is made of: those that change what an import
#: finds or does (where Python finds code and libraries, Ray's auth mode, which Ray
#: reads when it is imported). Not the service's nor MLflow's settings: a fork gets its
#: job's (or trial's) whole environment, and no module of ours reads one when it is
#: imported (tests/service/test_warm_drivers.py); not what Ray sets per worker.
KEY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV", "PATH",
            "LD_LIBRARY_PATH", "LD_PRELOAD", "HOME", "TMPDIR", "RAY_AUTH_MODE")
ROLES = ("driver", "trainer")
ROOT = Path(__file__).resolve().parents[2]
HEADER = struct.Struct("!Q")


def enabled(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(SWITCH_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def node_env(env: dict[str, str]) -> dict[str, str]:
    """The environment without what Ray and the service set per job."""
    return {k: v for k, v in env.items()
            if k not in PER_JOB and not k.startswith(PER_JOB_PREFIXES)}


def raylet_pid(pid: int | None = None) -> int | None:
    """The pid of the raylet this process descends from (a Job's entrypoint is the child
    of its job supervisor, a Ray worker, a child of the raylet); None outside Ray."""
    pid = os.getppid() if pid is None else pid
    for _ in range(8):
        if pid <= 1:
            return None
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if name == "raylet":
            return pid
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return None


def source_stamp() -> str:
    """Path, size and mtime of each of the project's Python files."""
    h = hashlib.sha256(str(ROOT).encode())
    for package in ("service", "trainables", "search_spaces"):
        for directory, dirs, files in sorted(os.walk(ROOT / package)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(directory, name))
                    h.update(f"{directory}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def warm_dir(env: dict[str, str] | None = None) -> Path | None:
    """The folder of the warm drivers' sockets: made if missing; None if it is not this
    user's alone (another user's socket there must never receive a study)."""
    env = os.environ if env is None else env
    path = Path(env.get(DIR_VAR) or Path(tempfile.gettempdir()) / f"credit-warm-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def key_env(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in KEY_VARS if k in env}


def socket_path(env: dict[str, str] | None = None, role: str = "driver") -> Path | None:
    """This node's warm process's socket for ``role`` (``driver``: a study's driver;
    ``trainer``: a trial's training) and this environment; None where there is none to
    be had (switched off, not under a raylet, no private folder)."""
    env = dict(os.environ if env is None else env)
    raylet = raylet_pid()
    if not enabled(env) or raylet is None or (directory := warm_dir(env)) is None:
        return None
    key = hashlib.sha256(json.dumps(
        [role, sys.executable, raylet, source_stamp(), sorted(key_env(env).items())]).encode())
    return directory / f"{role}-{key.hexdigest()[:20]}.sock"


# ------------------------------------------------------------------ frames
def send_frame(sock: socket.socket, message: object) -> None:
    """One pickled message, length first (between processes of one user only)."""
    data = pickle.dumps(message)
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> object | None:
    """The next message; None when the other end has closed."""
    head = recv_exact(sock, HEADER.size)
    if head is None:
        return None
    body = recv_exact(sock, HEADER.unpack(head)[0])
    if body is None:
        return None
    return pickle.loads(body)


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``sock``; None if the other end closes first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


# ------------------------------------------------------------------------ the client
def open_warm(path: Path, argv: list[str], fds: list[int], payload: bytes = b""):
    """Have the warm process at ``path`` fork, with this process's environment and
    working directory, ``fds`` as its standard streams (and a 4th, a trainer's channel)
    and ``payload`` (a trainer's trial): (socket, its lines, the fork's pid), or None if
    no warm process answers there. Closing the socket kills the fork."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        body = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
                           "payload": payload.hex()}).encode()
        socket.send_fds(sock, [HEADER.pack(len(body))], fds)
        sock.sendall(body)
        lines = sock.makefile("r")
        started = json.loads(lines.readline() or "null")
    except (OSError, ValueError):
        sock.close()
        return None
    if not isinstance(started, dict) or "pid" not in started:
        sock.close()
        return None
    return sock, lines, int(started["pid"])


def exit_code(lines) -> int | None:
    """The fork's exit code (negative: killed by that signal), once it has exited; None
    if the warm process went without saying."""
    try:
        return int(json.loads(lines.readline())["exit"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_warm(path: Path, argv: list[str]) -> int | None:
    """Run the study in the warm driver at ``path``: its exit code (negative: killed by
    that signal); None if no warm driver answers there."""
    opened = open_warm(path, argv, [0, 1, 2])
    if opened is None:
        return None
    _, lines, pid = opened

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    ended = exit_code(lines)
    if ended is None:
        print(f"credit: the warm driver of this node ended without the study's exit "
              f"status (driver pid {pid})", file=sys.stderr)
        return 1
    return ended


def start_warm(path: Path, role: str = "driver") -> None:
    """Start this node's warm process for ``role`` in the background. It is nobody's
    child: a shell starts it and exits, so Ray's clean-up of this job or worker (the
    process group, the children of a worker that exits) never reaches it. It gives up
    at once if another holds the socket."""
    env = node_env(dict(os.environ))
    command = [sys.executable, "-m", "service.runner.warm", str(path),
               str(raylet_pid() or 0), role]
    try:
        subprocess.run(["/bin/sh", "-c", 'exec "$@" </dev/null >>"$0" 2>&1 &',
                        str(path.with_suffix(".log")), *command],
                       env=env, cwd=str(ROOT), start_new_session=True, close_fds=True,
                       timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        print(f"credit: could not start a warm {role}: {error}", file=sys.stderr)


def exit_as(code: int) -> None:
    """Exit as the driver did: with its code, or killed by its signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code & 0xFF)


def main() -> None:
    argv = sys.argv[1:]
    path = socket_path()
    if path is not None:
        code = run_warm(path, argv)
        if code is not None:
            exit_as(code)
        start_warm(path)
    os.execv(sys.executable, [sys.executable, "-m", "service.runner.job", *argv])


if __name__ == "__main__":
    main()
