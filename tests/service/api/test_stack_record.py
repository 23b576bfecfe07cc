"""One local stack per CREDIT_HOME (``service.api.stack_record``), with real processes:
a crashed stack's processes are stopped by the next start, and only they; a second
stack over a home in use is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from service.api.local_stack import StackError, session_members
from service.api.stack_record import ENV, StackGuard

#: a session leader with a child, as `ray start` leaves daemons behind
TREE = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; " \
       "time.sleep(300)']); time.sleep(300)"


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
