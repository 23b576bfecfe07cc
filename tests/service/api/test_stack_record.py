"""One local stack per CREDIT_HOME (``service.local.record``), with real processes:
a crashed stack's processes are stopped by the next start, and only they; a second
stack over a home in use is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.local.record import ENV, StackGuard
from service.local.stack import StackError, session_members

#: a session leader with a child, as `ray start` leaves daemons behind; the child's
#: environment lacks the stack's id, as a Ray agent's does once it renamed itself
#: (setproctitle overwrites the environment /proc shows)
TREE = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; " \
       "time.sleep(300)'], env={}); time.sleep(300)"


def _session(env_extra: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(env_extra)
    proc = subprocess.Popen([sys.executable, "-c", TREE], env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while len(session_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


def test_a_crashed_stack_is_stopped_and_only_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "this-test")  # restored (unset) after: claim() sets it
    old = _session({ENV: "old-stack"})
    stranger = _session({})  # another session: not recorded, must survive
    # the previous stack's record; its serving process is gone (its lock is free)
    (tmp_path / "stack.json").write_text(json.dumps({
        "serve_pid": 999999, "stack_id": "old-stack",
        "parts": [{"role": "ray", "sid": old.pid},
                  {"role": "mlflow", "sid": stranger.pid}]}))
    try:
        guard = StackGuard(tmp_path)
        stopped = guard.claim()
        assert len(stopped) == 1 and "ray" in stopped[0] and "2 processes" in stopped[0]
        old.wait(timeout=30)
        assert session_members(old.pid) == []
        # the stranger's session was recorded, but its processes lack the stack's id
        assert len(session_members(stranger.pid)) == 2
        assert os.environ[ENV] == guard.stack_id
        record = json.loads((tmp_path / "stack.json").read_text())
        assert record["stack_id"] == guard.stack_id and record["parts"] == []

        with pytest.raises(StackError, match="already runs over"):
            StackGuard(tmp_path).claim()  # never two stacks over one home
        guard.release()
        assert not (tmp_path / "stack.json").exists()
        StackGuard(tmp_path).claim()  # free again once released
    finally:
        for proc in (old, stranger):
            for pid in session_members(proc.pid):
                os.kill(pid, 9)
            proc.wait()


def test_parts_started_together_are_all_recorded_even_one_that_failed(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "this-test")
    guard = StackGuard(tmp_path)
    guard.claim()

    def failing(timeout_s: float) -> None:
        raise StackError("did not answer")  # its processes may run: recorded all the same

    try:
        with ThreadPoolExecutor(3) as pool:
            results = [pool.submit(guard.recording(role, start, lambda sid=sid: sid), 1.0)
                       for role, start, sid in (("ray", lambda t: "up", 101),
                                                ("mlflow", failing, 102),
                                                ("optuna-dashboard", lambda t: "up", None))]
        assert results[0].result() == "up"
        with pytest.raises(StackError):
            results[1].result()
        record = json.loads((tmp_path / "stack.json").read_text())
        # a part whose process never started (no session) is not recorded
        assert sorted((p["role"], p["sid"]) for p in record["parts"]) == \
            [("mlflow", 102), ("ray", 101)]
    finally:
        guard.release()
