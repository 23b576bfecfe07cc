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
gets a new warm driver) and the environment a study's driver imports under (every
variable but those Ray and the service set per job).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

#: Set to "0" (or "false", "no", "off"): every study's driver starts cold.
SWITCH_VAR = "CREDIT_WARM_DRIVERS"
#: Where the warm drivers' sockets, locks and logs are (a folder only this user reaches).
DIR_VAR = "CREDIT_WARM_DIR"
#: Seconds a warm driver with no study waits for one before it exits (default 1800).
IDLE_VAR = "CREDIT_WARM_IDLE_S"
#: Environment variables set per job, not per node: not part of a warm driver's key,
#: and not in its own environment (each driver gets its job's whole environment).
PER_JOB = ("CREDIT_STUDY_SPEC", "RAY_JOB_CONFIG_JSON_ENV_VAR", "PWD", "OLDPWD", "SHLVL", "_")
PER_JOB_PREFIXES = ("RAY_JOB_",)
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
    import tempfile

    path = Path(env.get(DIR_VAR) or Path(tempfile.gettempdir()) / f"credit-warm-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def socket_path(env: dict[str, str] | None = None) -> Path | None:
    """This node's warm driver's socket for this environment; None where there is none
    to be had (switched off, not under a raylet, no private folder)."""
    env = dict(os.environ if env is None else env)
    raylet = raylet_pid()
    if not enabled(env) or raylet is None or (directory := warm_dir(env)) is None:
        return None
    key = hashlib.sha256(json.dumps(
        [sys.executable, raylet, source_stamp(), sorted(node_env(env).items())]).encode())
    return directory / f"{key.hexdigest()[:20]}.sock"


# ------------------------------------------------------------------------ the client
def _send(sock: socket.socket, argv: list[str]) -> None:
    payload = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(sock, [HEADER.pack(len(payload))], [0, 1, 2])
    sock.sendall(payload)


def run_warm(path: Path, argv: list[str]) -> int | None:
    """Run the study in the warm driver at ``path``: its exit code (negative: killed by
    that signal); None if no warm driver answers there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        _send(sock, argv)
        lines = sock.makefile("r")
        started = json.loads(lines.readline() or "null")
    except (OSError, ValueError):
        sock.close()
        return None
    if not isinstance(started, dict) or "pid" not in started:
        return None
    pid = int(started["pid"])

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    line = lines.readline()
    try:
        ended = json.loads(line)["exit"]
    except (ValueError, KeyError, TypeError):
        print(f"credit: the warm driver of this node ended without the study's exit "
              f"status (driver pid {pid})", file=sys.stderr)
        return 1
    return int(ended)


def start_warm(path: Path) -> None:
    """Start this node's warm driver in the background (its own session: Ray's stop of
    this job must not reach it). It gives up at once if another holds the socket."""
    env = node_env(dict(os.environ))
    log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 -- handed to the child
    try:
        subprocess.Popen([sys.executable, "-m", "service.runner.warm", str(path),
                          str(raylet_pid() or 0)],
                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         cwd=str(ROOT), start_new_session=True, close_fds=True)
    except OSError as error:
        print(f"credit: could not start a warm driver: {error}", file=sys.stderr)
    finally:
        log.close()


def exit_as(code: int) -> None:
    """Exit as the driver did: with its code, or killed by its signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


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
