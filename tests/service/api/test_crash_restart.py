"""``credit serve --local`` SIGKILLed mid-study and started again over the same
CREDIT_HOME (the whole stack, for real: Ray head, MLflow server, Optuna dashboard, API).

Before: the old Ray head and MLflow kept running unsupervised beside a second stack;
the study finished in the old cluster while the new API served it FAILED with stale
counts and ``/best`` said ``final: true``. After: the restart stops the previous
stack's processes (only those), so there is one stack; the study, whose driver died
with it, is FAILED with the reason, no trial counted running, and ``/best`` agrees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.local.stack import free_port, session_members


def _start(home: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    env.update(CREDIT_HOME=str(home), CREDIT_LOST_JOB_GRACE_S="20", CREDIT_SYNC_INTERVAL_S="1")
    with open(home / f"serve-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--local", "--port", str(port),
             "--cpus", "2", "--mlflow-port", str(free_port()),
             "--dashboard-port", str(free_port()), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home / f"serve-{port}.log").read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the local stack did not come up")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "(gone)"


def _wait(c: httpx.Client, url: str, predicate, timeout_s: float = 400) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = c.get(url).json()
        if predicate(body):
            return body
        time.sleep(1)
    raise AssertionError(f"{url}: {body}")


@pytest.mark.slow
def test_api_sigkilled_mid_study_then_restarted(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first = _start(home, free_port())
    port = free_port()
    second = None
    try:
        token = (home / "api_token").read_text().strip()
        base = f"http://127.0.0.1:{first.args[first.args.index('--port') + 1]}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=120) as c:
            study = c.post("/studies", json={
                "name": "crashed", "space": "mnist-fc-backprop", "max_trials": 6,
                "parallel_trials": 1, "epochs": 30, "batches_per_epoch": 50,
                "dataset": "mnist-5k"}).json()
            _wait(c, f"/studies/{study['id']}", lambda b: b["counts"]["running"] >= 1)
        old = json.loads((home / "stack.json").read_text())
        old_sids = [p["sid"] for p in old["parts"]]
        assert all(session_members(sid) for sid in old_sids)

        os.kill(first.pid, signal.SIGKILL)  # the API alone: its stack runs on, orphaned
        first.wait()
        assert all(session_members(sid) for sid in old_sids)

        second = _start(home, port)
        left = {pid: _cmdline(pid) for sid in old_sids for pid in session_members(sid)}
        assert left == {}, left  # one stack
        new = json.loads((home / "stack.json").read_text())
        assert new["stack_id"] != old["stack_id"]
        assert sorted(p["role"] for p in new["parts"]) == ["mlflow", "optuna-dashboard", "ray"]

        with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            body = _wait(c, f"/studies/{study['id']}", lambda b: b["status"] not in
                         ("PENDING", "RUNNING"), timeout_s=180)
            assert body["status"] == "FAILED", body
            assert "driver" in body["message"], body["message"]
            assert body["counts"]["running"] == 0, body["counts"]
            best = c.get(f"/studies/{study['id']}/best")
            if body["counts"]["complete"]:
                assert best.json()["final"] is True
            else:
                assert best.status_code == 409
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=240)
