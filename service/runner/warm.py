"""A node's warm processes: ``python -m service.runner.warm SOCKET RAYLET_PID [ROLE]``.

ROLE ``driver`` (the default) forks study drivers; ``trainer`` forks the processes
that train Tune's trials (``service.runner.relay``, ``service.runner.warm_trainer``):
torch, the trainables and MLflow imported once per node instead of once per trial.

One process per Ray node (and Python, source and environment: ``service.runner.launch``
keys it) that imports the study runner once — Ray, Tune, Optuna, MLflow, the service's
code: seconds of CPU and a few hundred MB a cold driver pays again for every study —
then forks one driver per study its socket receives. The fork is the study's driver,
as ``python -m service.runner.job`` would be: the job's arguments, environment,
working directory and standard streams, its own Ray connection (made after the fork:
the warm process never joins Ray), its own exit code. One study's crash, stop or
end never touches another's: each is its own process.

- Only this user reaches the socket (its folder is private; the peer's uid is checked).
- A driver dies with the warm process (``PR_SET_PDEATHSIG``), and is killed when its
  job's entrypoint (``launch``) is gone (Ray's SIGKILL after its stop grace period).
- It exits when its raylet is gone, or after ``CREDIT_WARM_IDLE_S`` (600) seconds
  with no fork; its lock (``SOCKET.lock``) makes it the only one of its key.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib
import json
import logging
import os
import pkgutil
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path

from service.runner.launch import HEADER, IDLE_VAR, recv_exact

#: What a role's forks import while they run, beyond their module's imports: imported
#: here once, so that no fork pays for them (measured: ``tests/bench``).
PRELOAD = {
    "driver": ("service.runner.job", "ray.tune.execution.tune_controller",
               "ray.train._internal.storage", "optuna.samplers", "mlflow.tracking",
               "matplotlib.pyplot", "sqlalchemy.dialects.sqlite", "pyarrow.fs"),
    "trainer": ("service.runner.warm_trainer", "mlflow.tracking", "matplotlib.pyplot"),
}
#: What a fork of each role runs: ``module:function(request, channel fd or None)``,
#: which returns the fork's exit code.
RUN = {"driver": "service.runner.warm:run_job", "trainer": "service.runner.warm_trainer:train"}
FDS = {"driver": 3, "trainer": 4}
MAX_REQUEST = 64 << 20
PR_SET_PDEATHSIG = 1


def _preload(role: str) -> None:
    for name in PRELOAD[role]:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional part (a dialect) missing: its drivers import it
            pass


def _request(conn: socket.socket, nfds: int) -> tuple[dict, list[int]]:
    """The job's arguments, environment and working directory, its 3 streams (and a
    trainer's channel)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    if struct.unpack("3i", creds)[1] != os.getuid():
        raise PermissionError("a process of another user")
    head, fds, _, _ = socket.recv_fds(conn, HEADER.size, nfds)
    try:
        if len(head) != HEADER.size or len(fds) != nfds:
            raise ConnectionError(f"a request without its header and {nfds} descriptors")
        (size,) = HEADER.unpack(head)
        if size > MAX_REQUEST:
            raise ConnectionError(f"a request of {size} bytes")
        body = recv_exact(conn, size)
        if body is None:
            raise ConnectionError("the entrypoint hung up")
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def run_job(request: dict, channel: int | None) -> int:
    """A driver fork: ``python -m service.runner.job ARGS``."""
    sys.argv = ["service.runner.job", *request["argv"]]
    return importlib.import_module("service.runner.job").main(request["argv"])


def _tidy() -> None:
    """What the interpreter's exit would still do for a fork that matters, with public
    calls: wait for its own threads (a last MLflow write), leave Ray, flush the logs and
    streams. Not the rest of it (tearing every module down: about a CPU-second a fork,
    measured by tests/bench/bench_studies)."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=30)
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()


def _run_fork(role: str, request: dict, fds: list[int],
              close: list[socket.socket | int]) -> None:
    """In the fork: become the job's driver (or the trial's trainer), run, tidy up, exit
    (``os._exit``: never back into the warm process's frames)."""
    code = 1
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for item in close:
            if isinstance(item, socket.socket):
                item.close()
            else:
                os.close(item)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = pkgutil.resolve_name(RUN[role])(request, fds[3] if len(fds) > 3 else None)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        _tidy()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code & 0xFF)


class WarmDriver:
    """The socket, the drivers forked from it and their entrypoints' connections."""

    def __init__(self, path: Path, raylet: int, idle_s: float, role: str = "driver"):
        self.path, self.raylet, self.idle_s, self.role = path, raylet, idle_s, role
        self.sel = selectors.DefaultSelector()
        self.drivers: dict[int, socket.socket] = {}  # driver pid → its entrypoint
        self.last = time.monotonic()
        self.inode = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def bind(self) -> socket.socket:
        self.path.unlink(missing_ok=True)  # a dead one's: we hold the lock
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.inode = self.path.stat().st_ino
        server.listen(64)
        return server

    def raylet_alive(self) -> bool:
        try:  # a zombie is dead too (its parent has not reaped it yet)
            stat = Path(f"/proc/{self.raylet}/stat").read_text()
        except OSError:
            return False
        name, _, rest = stat.partition(" (")[2].rpartition(")")
        return name == "raylet" and rest.split()[0] != "Z"

    def serve(self, server: socket.socket, lock_fd: int) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        self.sel.register(server, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "child")
        print(f"credit: warm {self.role} {os.getpid()} ready at {self.path}", flush=True)
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "accept":
                    self.accept(server, lock_fd)
                elif key.data == "child":
                    while True:
                        try:
                            if not os.read(self.wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                else:  # an entrypoint hung up (or wrote): killed, its driver goes too
                    self.entrypoint_gone(key.data)
            self.reap()
            if not self.raylet_alive():
                print(f"credit: warm {self.role}: its raylet is gone; exiting", flush=True)
                return
            if not self.drivers and time.monotonic() - self.last > self.idle_s:
                print(f"credit: warm {self.role}: idle; exiting", flush=True)
                return

    def accept(self, server: socket.socket, lock_fd: int) -> None:
        conn, _ = server.accept()
        self.last = time.monotonic()
        conn.settimeout(10)
        try:
            request, fds = _request(conn, FDS[self.role])
        except (OSError, ValueError, ConnectionError) as error:
            print(f"credit: warm {self.role}: a request refused: {error}", flush=True)
            conn.close()
            return
        # what the fork must not hold: sockets closed as objects (none is closed again by
        # its finalizer, on a number reused since), the lock and the pipe by number
        close = [server, conn, *self.drivers.values(), lock_fd, self.wake_r, self.wake_w]
        pid = os.fork()
        if pid == 0:
            _run_fork(self.role, request, fds, close)
        for fd in fds:
            os.close(fd)
        self.drivers[pid] = conn
        self.sel.register(conn, selectors.EVENT_READ, pid)
        print(f"credit: warm {self.role}: {self.role} {pid} started", flush=True)
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            self.entrypoint_gone(pid)

    def close(self) -> None:
        """The socket's file removed (not a successor's), the forks still running told to
        stop (they die with this process anyway: ``PR_SET_PDEATHSIG``)."""
        try:
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass
        for pid in list(self.drivers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def entrypoint_gone(self, pid: int) -> None:
        conn = self.drivers.get(pid)
        try:
            if conn is not None and conn.recv(1, socket.MSG_PEEK):
                conn.recv(4096)  # it has nothing to say: drop it
                return
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if conn is not None:
            self.sel.unregister(conn)

    def reap(self) -> None:
        while self.drivers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.drivers.pop(pid, None)
            self.last = time.monotonic()
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            print(f"credit: warm {self.role}: {self.role} {pid} exited {code}", flush=True)
            try:
                self.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            except OSError:
                pass
            conn.close()


def main(argv: list[str]) -> int:
    path, raylet = Path(argv[0]), int(argv[1])
    role = argv[2] if len(argv) > 2 else "driver"
    if role not in RUN:
        print(f"credit: warm: unknown role {role!r}", file=sys.stderr)
        return 2
    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another is (becoming) this key's warm driver
    started = time.perf_counter()
    _preload(role)
    print(f"credit: warm {role} {os.getpid()}: imports took "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    warm = WarmDriver(path, raylet, float(os.environ.get(IDLE_VAR) or 600), role)
    server = warm.bind()
    me = os.getpid()
    try:
        warm.serve(server, lock)
    finally:
        if os.getpid() == me:  # the warm process's clean-up, never a fork's
            warm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
