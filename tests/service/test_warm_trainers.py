"""A node's warm trainer (``service.runner.warm``, role ``trainer``) and the relays Tune
runs trials in (``service.runner.relay``), on the session's real two-node Ray cluster.

A trial trained in a fork of the warm trainer reports exactly what it reports trained
in Tune's own actor (the same configurations, the same numbers, bit for bit); a fork
killed mid-trial is an infrastructure failure: Tune restarts the trial from its last
checkpoint; a trial Tune stops early takes its fork along.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from service.records import tags
from service.records import tracking as T
from service.spec import StudySpec
from tests.service.processes import KILLED_TRIAL_EPOCHS, an_epoch_logged

ROOT = Path(__file__).resolve().parents[2]
NODE_IP = "127.0.0.2"


def _logs() -> str:
    folder = Path(os.environ["CREDIT_WARM_DIR"])
    return "".join(p.read_text() for p in sorted(folder.glob("trainer-*.log")))


def _forks(text: str) -> tuple[set[int], set[int]]:
    """(started, exited) fork pids of the warm trainers' logs."""
    started, exited = set(), set()
    for line in text.splitlines():
        words = line.split()
        if line.endswith(" started"):  # "credit: warm trainer: trainer PID started"
            started.add(int(words[-2]))
        elif len(words) > 3 and words[-2] == "exited":  # "... trainer PID exited CODE"
            exited.add(int(words[-3]))
    return started, exited


def _study(spec: StudySpec, warm: bool):
    """``run_study(spec)`` as a driver whose trials may (``warm``) or may not use the
    nodes' warm trainers (``CREDIT_WARM_DRIVERS`` in the job's runtime environment)."""
    import ray

    from service.runner.study import run_study

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=os.environ["RAY_ADDRESS"], _node_ip_address=NODE_IP,
             log_to_driver=False, runtime_env={"env_vars": {
                 "PYTHONPATH": str(ROOT), "CREDIT_WARM_DRIVERS": "1" if warm else "0"}})
    try:
        return run_study(spec)
    finally:
        ray.shutdown()


def _spec(tmp_path: Path, name: str, **kw) -> StudySpec:
    fields = dict(space="mnist-fc-node-perturbation", max_trials=3, parallel_trials=3,
                  sampler="random", seed=4, epochs=2, batches_per_epoch=10,
                  dataset="mnist-5k", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                  storage=f"sqlite:///{tmp_path / 'optuna.db'}", name=name)
    return StudySpec(**{**fields, **kw})


@pytest.fixture
def warm_nodes(ray_cluster, tmp_path):
    """Both nodes' warm trainers for this driver's trials ready: a study of 3 trials at
    once (3 CPUs: both nodes) starts any that is missing (a warm trainer is keyed by
    its trials' environment too: another test's driver may have started others)."""
    (tmp_path / "warm-up").mkdir()  # its own stores: the tests read theirs
    _study(_spec(tmp_path / "warm-up", "warm-up"), warm=True)
    folder = Path(os.environ["CREDIT_WARM_DIR"])

    def ready() -> bool:
        logs = [p.read_text() for p in folder.glob("trainer-*.log")]
        return len(logs) >= 2 and all(" ready at " in text for text in logs)

    deadline = time.monotonic() + 180
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready(), _logs()


def _histories(result) -> dict[str, list[float]]:
    """Each trial's test_loss per epoch, by its configuration."""
    ml = MlflowClient(result.tracking_uri)
    out = {}
    for run in T.child_runs(result.tracking_uri, result.experiment_id, result.parent_run_id):
        if run.data.tags.get(tags.ROLE) != "trial":
            continue
        key = repr(sorted((k, v) for k, v in run.data.params.items() if k != "seed"))
        points = ml.get_metric_history(run.info.run_id, "test_loss")
        out[key] = [m.value for m in sorted(points, key=lambda m: m.step)]
    return out


def test_a_fork_trains_a_trial_bit_for_bit_as_tunes_own_actor(warm_nodes, tmp_path):
    cold = _study(_spec(tmp_path, "cold"), warm=False)
    before = _forks(_logs())[0]
    warm = _study(_spec(tmp_path, "warm"), warm=True)
    started, exited = _forks(_logs())
    assert len(started - before) == 3, _logs()  # each trial of the warm study was a fork
    assert started - before <= exited  # and each ended with its trial
    assert cold.status == warm.status == "SUCCEEDED", (cold.message, warm.message)
    assert cold.best_params == warm.best_params
    assert cold.best_value == warm.best_value
    assert _histories(cold) == _histories(warm)
    assert len(_histories(warm)) == 3


def _kill_a_fork_after_its_first_epoch(box: dict, tmp_path: Path, before: set[int],
                                       stop: threading.Event) -> None:
    while not stop.is_set():
        started, exited = _forks(_logs())
        running = started - exited - before
        if running and an_epoch_logged(f"sqlite:///{tmp_path / 'mlflow.db'}"):
            box["pid"] = pid = min(running)
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.2)


@pytest.mark.slow  # ~40 s
def test_a_killed_fork_restarts_its_trial_from_its_checkpoint(warm_nodes, tmp_path):
    from service.records.optuna_trials import RESTARTS_ATTR

    spec = _spec(tmp_path, "fork-killed", space="mnist-fc-backprop", max_trials=1,
                 parallel_trials=1, epochs=KILLED_TRIAL_EPOCHS, batches_per_epoch=150)
    before = _forks(_logs())[0]
    box: dict = {}
    stop = threading.Event()
    thread = threading.Thread(target=_kill_a_fork_after_its_first_epoch,
                              args=(box, tmp_path, before, stop), daemon=True)
    thread.start()
    try:
        result = _study(spec, warm=True)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert "pid" in box, "no fork was found to kill"
    assert f"trainer {box['pid']} exited -9" in _logs()
    assert result.status == "SUCCEEDED", result.message
    import optuna

    (trial,) = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs[RESTARTS_ATTR] == 1
    (run,) = [r for r in T.child_runs(result.tracking_uri, result.experiment_id,
                                      result.parent_run_id)
              if r.data.tags.get(tags.ROLE) == "trial"]
    assert run.info.status == "FINISHED" and run.data.tags[tags.RESTARTS] == "1"
    history = MlflowClient(spec.tracking_uri).get_metric_history(run.info.run_id, "test_loss")
    assert sorted(m.step for m in history) == list(range(1, KILLED_TRIAL_EPOCHS + 1))


def test_trials_tune_stops_early_take_their_forks_along(warm_nodes, tmp_path):
    """ASHA stops the weaker trials at its first rung: their forks are killed then (exit
    -9), not left to train on."""
    before = _forks(_logs())[0]
    spec = _spec(tmp_path, "asha", max_trials=4, parallel_trials=3, epochs=6,
                 batches_per_epoch=40, early_stopping=True)
    result = _study(spec, warm=True)
    assert result.status == "SUCCEEDED", result.message
    assert result.counts["pruned"] >= 1
    started, exited = _forks(_logs())
    mine = started - before
    assert mine and mine <= exited, _logs()
    killed = [pid for pid in mine if f"trainer {pid} exited -9" in _logs()]
    assert len(killed) >= result.counts["pruned"], _logs()
