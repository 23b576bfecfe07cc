"""One local stack per ``CREDIT_HOME``: the record ``credit serve --local`` keeps of the
processes it started, and the take-over after a crash.

- ``CREDIT_HOME/stack.lock`` is held (``flock``) by the serving process for its whole
  life; the kernel releases it when that process dies, however it dies. A second
  ``credit serve --local`` over the same home finds it held and refuses to start.
- ``CREDIT_HOME/stack.json`` lists what the stack started: per part, its session id
  (each part runs in its own session) and the stack's id, which every process it
  starts inherits in its environment (``CREDIT_STACK_ID``, set in the serving process
  before it starts anything: Ray's daemons, workers and study drivers, MLflow).
- Started again after a crash (the lock is free, the record is still there), it stops
  the previous stack's processes before starting anew: every process of a recorded
  session in which at least one process's environment holds the recorded stack id, so
  a recycled session id of someone else's is never touched. Not every process of the
  stack shows the id: Ray's dashboard heads and agents rename themselves
  (``setproctitle``), which overwrites the environment ``/proc`` shows; Linux does not
  reuse a session id while any process of the session lives, so one marked process
  vouches for its session.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from service.local.stack import StackError, session_members, stop_processes

RECORD, LOCK = "stack.json", "stack.lock"


ENV = "CREDIT_STACK_ID"


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def ours(sid: int, stack_id: str) -> list[int]:
    """Live processes of session ``sid`` if it is the stack's: one of them at least
    carries ``CREDIT_STACK_ID=stack_id`` (see the module's docstring); else none."""
    members = session_members(sid)
    mark = f"{ENV}={stack_id}".encode()
    if stack_id and any(mark in _environ(pid) for pid in members):
        return members
    return []


def stop_ours(sid: int, stack_id: str, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, to every process of session ``sid`` if it
    is the stack's (``ours``) — those that do not show the mark, or start meanwhile,
    included; how many there were."""
    first = ours(sid, stack_id)
    if first:
        stop_processes(lambda: session_members(sid), grace_s)
    return len(first)


class StackGuard:
    """The claim of one ``credit serve --local`` on its ``CREDIT_HOME``."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.stack_id = uuid.uuid4().hex
        self.parts: list[dict] = []
        self._lock: IO | None = None
        self._writing = threading.Lock()  # parts start in threads (``start_together``)

    @property
    def record_path(self) -> Path:
        return self.home / RECORD

    def claim(self) -> list[str]:
        """Take the home's lock (``StackError`` if another stack holds it), then stop what
        a crashed previous stack left running; what was stopped, in words."""
        self.home.mkdir(parents=True, exist_ok=True)
        lock = open(self.home / LOCK, "a+")  # noqa: SIM115 - held for the stack's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StackError(f"a local stack already runs over {self.home} (pid {holder}); "
                             "stop it first, or use another CREDIT_HOME") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        stopped = self._stop_previous()
        os.environ[ENV] = self.stack_id  # inherited by everything the stack starts
        self._write()
        return stopped

    def _stop_previous(self) -> list[str]:
        try:
            previous = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return []
        stopped = []
        for part in previous.get("parts", []):
            n = stop_ours(int(part["sid"]), str(previous.get("stack_id", "")))
            if n:
                stopped.append(f"{part['role']} of the previous stack ({n} processes, "
                               f"session {part['sid']})")
        return stopped

    def add(self, role: str, sid: int) -> None:
        """Record a part as soon as it is started (before anything else may crash)."""
        with self._writing:
            self.parts.append({"role": role, "sid": sid})
            self._write()

    def recording(self, role: str, start: Callable[[float], object],
                  sid: Callable[[], int | None]) -> Callable[[float], object]:
        """``start``, recording the part's session ``sid()`` once it returns or fails
        (a part that failed half-way may have left processes running)."""
        def started(timeout_s: float) -> object:
            try:
                return start(timeout_s)
            finally:
                session = sid()
                if session:
                    self.add(role, session)
        return started

    def _write(self) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"serve_pid": os.getpid(), "stack_id": self.stack_id,
                                   "parts": self.parts}, indent=1))
        tmp.replace(self.record_path)

    def release(self) -> None:
        """The stack stopped cleanly: no record left, the lock freed."""
        self.record_path.unlink(missing_ok=True)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
