"""The study runner on real Ray (two nodes), a real MLflow store and a real Optuna storage."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from service.records import tags
from service.records import tracking as T
from service.records import trial_logger as TL
from service.records.optuna_trials import LOST, RESTARTS_ATTR, TUNE_TRIAL_ID, WAITING_ATTR
from service.spec import StudySpec
from tests.service.processes import (
    KILLED_TRIAL_EPOCHS,
    an_epoch_logged,
    holds_open,
    processes,
    started_at,
    uptime,
)


def run_study(*args, **kwargs):
    """``service.runner.study.run_study``, imported once the session's Ray cluster has set
    its auth token (Ray reads it when it is imported)."""
    from service.runner.study import run_study as run

    return run(*args, **kwargs)

TINY = dict(epochs=2, batches_per_epoch=15, dataset="mnist-5k")


def _stores(tmp_path: Path, name: str) -> dict:
    return {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "name": name}


def _children(result, role="trial"):
    runs = T.child_runs(result.tracking_uri, result.experiment_id, result.parent_run_id)
    return [r for r in runs if r.data.tags.get(tags.ROLE) == role]


def _optuna_trials(spec):
    return optuna.load_study(study_name=spec.name, storage=spec.storage).trials


def test_random_search_best_matches_optuna_and_mlflow(ray_cluster, tmp_path):
    # Epochs long enough that three trials overlap (the cluster has 3 CPUs, one trial
    # each): warm trials of TINY's 15 batches can end before Tune starts the next one,
    # and then all of them may run on the head node.
    spec = StudySpec(space="mnist-fc-node-perturbation", max_trials=4, parallel_trials=3,
                     sampler="random", seed=1, **dict(TINY, batches_per_epoch=1000),
                     **_stores(tmp_path, "rs"))
    seen = []
    result = run_study(spec, progress=seen.append)
    assert result.status == "SUCCEEDED"
    assert result.counts["complete"] == 4
    assert seen and seen[-1]["counts"]["complete"] == 4

    complete = [t for t in _optuna_trials(spec) if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert result.best_value == min(t.value for t in complete)

    children = _children(result)
    assert len(children) == 4
    client = MlflowClient(result.tracking_uri)
    finals = {}
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"lr", "noise_std", "feedback_lr", "rule", "momentum"} <= set(run.data.params)
        assert run.data.params["rule"] == "node_perturbation"
        history = client.get_metric_history(run.info.run_id, "test_error")
        assert [m.step for m in history] == [1, 2]
        assert "angle/fc2" in run.data.metrics
        finals[run.info.run_id] = run.data.metrics["test_error"]
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/learning_curves.png", "plots/alignment.png"} <= arts
    assert result.best_value == min(finals.values())
    assert finals[result.best_run_id] == result.best_value
    # the best configuration is recorded on the parent run
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert float(parent.data.params["best.lr"]) == pytest.approx(result.best_params["lr"])
    assert parent.data.metrics["best_test_error"] == pytest.approx(result.best_value)
    assert parent.data.tags["credit.best_run_id"] == result.best_run_id
    # trials ran on both nodes of the cluster
    nodes = [r.data.tags.get("credit.node_id", "") for r in children]
    spans = sorted((r.info.start_time, r.info.end_time, node[:8])
                   for r, node in zip(children, nodes, strict=True))
    assert len(set(nodes)) == 2, spans


#: A space whose lr 5000 diverges in epoch 1 and 0.05 trains.
DIVERGING = {"name": "diverge", "experiment": "mnist-fc", "rule": "backprop",
             "fixed": {"momentum": 0.9},
             "params": {"lr": {"type": "categorical", "choices": [5000.0, 0.05]}}}


def test_diverging_trial_fails_alone(ray_cluster, tmp_path):
    space = DIVERGING
    # seed 0 draws lr = 0.05, 5000, 0.05, 0.05 (checked against Optuna's RandomSampler)
    spec = StudySpec(space=space, max_trials=4, parallel_trials=2, seed=0, **TINY,
                     **_stores(tmp_path, "div"))
    result = run_study(spec)
    assert result.status == "SUCCEEDED"
    assert result.counts["failed"] == 1 and result.counts["complete"] == 3
    assert result.best_params == {"lr": 0.05}
    failed = [t for t in result.trials if t.state == "FAILED"]
    assert all("diverged" in (t.error or "") for t in failed)
    assert all(t.run_id for t in result.trials)  # every trial maps to its MLflow run
    runs = _children(result)
    assert sorted(r.info.status for r in runs).count("FAILED") == len(failed)
    for r in runs:
        if r.info.status == "FAILED":
            assert "diverged in epoch 1" in r.data.tags[tags.FAILURE]
    states = [t.state.name for t in _optuna_trials(spec)]
    assert states.count("FAIL") == len(failed)
    # a failure of the trial itself is never retried, whatever restarts the study allows
    assert spec.max_trial_restarts == 3
    assert all(t.user_attrs.get(RESTARTS_ATTR) is None for t in _optuna_trials(spec))
    assert all(tags.RESTARTS not in r.data.tags for r in runs)


def _run_study_beside(spec, beside):
    """``run_study(spec)`` in this thread while ``beside(stop)`` runs in another, told to
    stop once the study has ended."""
    stop = threading.Event()
    thread = threading.Thread(target=beside, args=(stop,), daemon=True)
    thread.start()
    try:
        return run_study(spec)
    finally:
        stop.set()
        thread.join(timeout=10)


def _kill_after_first_epoch(result_box: dict, tmp_path: Path, stop: threading.Event) -> None:
    """Once a trial has logged its first epoch to MLflow, SIGKILL the Ray worker process
    that trains it (as a crashed worker or a lost node would end it): a trial actor of
    this session's cluster started since this began (an older one is an earlier test's,
    on its way out), the newest."""
    since = uptime()
    while not stop.is_set():
        if an_epoch_logged(f"sqlite:///{tmp_path / 'mlflow.db'}"):
            # this session's cluster only: its processes hold files of its temp dir open
            # (another cluster on this machine, a namespace test's, is not ours to kill)
            ours = f"/tmp/credit-test-ray-{os.getpid()}/"
            actors = [(started_at(pid), pid) for pid, cmd in processes()
                      if cmd.startswith("ray::") and "ImplicitFunc" in cmd
                      and holds_open(pid, ours)]
            result_box["older"] = [pid for start, pid in actors if (start or 0) < since]
            new = sorted((start, pid) for start, pid in actors if (start or 0) >= since)
            if new:
                pid = new[-1][1]
                os.kill(pid, signal.SIGKILL)
                result_box["killed_at"] = time.time()
                result_box["pid"] = pid
                return
        time.sleep(0.2)


def test_a_trial_whose_worker_dies_restarts_from_its_checkpoint(ray_cluster, tmp_path):
    """An infrastructure failure (the trial's worker process SIGKILLed after its first
    epoch) restarts the same trial from its last checkpoint: the study SUCCEEDS with
    the trial COMPLETE, one Optuna trial, one MLflow run FINISHED with one point per
    epoch, and the restart counted in both."""
    spec = StudySpec(space="mnist-fc-backprop", max_trials=1, epochs=KILLED_TRIAL_EPOCHS,
                     batches_per_epoch=150, dataset="mnist-5k", **_stores(tmp_path, "restarts"))
    box: dict = {}
    result = _run_study_beside(spec, lambda stop: _kill_after_first_epoch(box, tmp_path, stop))
    assert "killed_at" in box, "no trial worker was found to kill"
    assert result.status == "SUCCEEDED", result.message
    assert result.counts["complete"] == 1 and result.counts["failed"] == 0
    (trial,) = _optuna_trials(spec)
    assert trial.state.name == "COMPLETE" and trial.user_attrs[RESTARTS_ATTR] == 1
    (run,) = _children(result)
    assert run.info.status == "FINISHED" and run.data.tags[tags.RESTARTS] == "1"
    assert tags.FAILURE not in run.data.tags
    assert int(run.data.tags[tags.EPOCHS_REDONE]) >= 0
    assert float(run.data.tags[tags.RESTART_DELAY]) > 0
    history = MlflowClient(spec.tracking_uri).get_metric_history(run.info.run_id, "test_loss")
    assert sorted(m.step for m in history) == \
        list(range(1, KILLED_TRIAL_EPOCHS + 1))  # one point per epoch


def test_asha_stopped_trials_are_pruned_not_complete(ray_cluster, tmp_path):
    spec = StudySpec(space="mnist-fc-feedback-alignment", max_trials=6, parallel_trials=3,
                     early_stopping={"grace_period": 1, "reduction_factor": 3}, seed=0,
                     epochs=3, batches_per_epoch=10, dataset="mnist-5k",
                     **_stores(tmp_path, "asha"))
    result = run_study(spec)
    trials = _optuna_trials(spec)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [t.state.name for t in trials]
    runs = {r.data.tags[tags.TRIAL]: r for r in _children(result)}
    client = MlflowClient(result.tracking_uri)
    for t in trials:
        run = runs[t.user_attrs["tune_trial_id"]]
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "test_error")]
        if t.state.name == "COMPLETE":  # only full-length trials count as complete
            assert epochs == [1, 2, 3] and run.info.status == "FINISHED"
        else:
            assert t.state.name == "PRUNED" and len(epochs) < 3
            assert run.info.status == "KILLED" and run.data.tags[tags.STATE] == "PRUNED"
    assert all(r.info.status != "RUNNING" for r in runs.values())
    assert result.counts["pruned"] == len(pruned)


@pytest.mark.slow  # ~30 s: out of the default run (15-minute aim), CI runs it
def test_same_seed_same_configurations(ray_cluster, tmp_path):
    def sequence(name, seed):
        spec = StudySpec(space="mnist-fc-node-perturbation", max_trials=3, seed=seed,
                         epochs=1, batches_per_epoch=3, dataset="mnist-5k",
                         **_stores(tmp_path, name))
        run_study(spec)
        trials = sorted(_optuna_trials(spec), key=lambda t: t.number)
        return [t.params for t in trials]

    first, again, other = sequence("s1", 7), sequence("s2", 7), sequence("s3", 8)
    assert first == again
    assert first != other


def test_taken_name_is_refused_and_nothing_is_created(ray_cluster, tmp_path):
    from service.spec import StudyError

    spec = StudySpec(space="mnist-fc-backprop", max_trials=1, epochs=1, batches_per_epoch=2,
                     dataset="mnist-5k", **_stores(tmp_path, "taken"))
    run_study(spec)
    with pytest.raises(StudyError, match="taken"):
        run_study(spec)


def test_final_evaluation_with_seeds(ray_cluster, tmp_path):
    spec = StudySpec(space="mnist-fc-backprop", max_trials=2, parallel_trials=2, final_seeds=3,
                     **TINY, **_stores(tmp_path, "final"))
    result = run_study(spec)
    finals = _children(result, "final")
    assert len(finals) == 3
    assert sorted(int(r.data.params["seed"]) for r in finals) == [1, 2, 3]
    values = [r.data.metrics["test_error"] for r in finals]
    mean = sum(values) / 3
    assert result.final["final/test_error_mean"] == pytest.approx(mean)
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / 2) / math.sqrt(3)
    assert result.final["final/test_error_sem"] == pytest.approx(sem)
    parent = MlflowClient(result.tracking_uri).get_run(result.parent_run_id)
    assert parent.data.metrics["final/test_error_mean"] == pytest.approx(mean)


def _count_trials(db: Path, where: str = "1") -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute(f"select count(*) from trials where {where}").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow  # ~30 s: out of the default run (15-minute aim), CI runs it
def test_resume_after_the_driver_is_killed(ray_cluster, tmp_path, credit_home):
    stores = _stores(tmp_path, "resumed")
    args = [sys.executable, "-m", "service.cli", "search", "--space", "mnist-fc-backprop",
            "--name", "resumed", "--trials", "5", "--concurrency", "2", "--epochs", "3",
            "--batches-per-epoch", "40", "--dataset", "mnist-5k", "--quiet",
            "--tracking-uri", stores["tracking_uri"], "--storage", stores["storage"]]
    env = dict(os.environ)
    # Tune saves the experiment when it starts, at its trials' checkpoints, and (here)
    # not on a timer: a trial it started since its last save is lost with the driver.
    driver = subprocess.Popen(args, env={**env, "TUNE_GLOBAL_CHECKPOINT_S": "600"},
                              start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "optuna.db"
    deadline = time.time() + 240

    def started() -> bool:
        return _count_trials(db, "state='COMPLETE'") >= 2 and _count_trials(db) >= 3

    while not started() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.5)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    assert started()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()

    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    spec = StudySpec(space="mnist-fc-backprop", max_trials=5, epochs=3, **stores)
    trials = _optuna_trials(spec)
    assert [t.state.name for t in trials].count("COMPLETE") == 5
    # A trial Tune started after its last save of the experiment is lost with the driver;
    # the resumed study ran another in its place. Such a trial says so, everywhere.
    lost = [t for t in trials if t.state.name != "COMPLETE"]
    assert all(t.state.name == "FAIL" and t.user_attrs["failure"] == LOST for t in lost)
    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name("credit-search")
    parent = T.find_runs(stores["tracking_uri"], exp.experiment_id,
                         f"tags.`{tags.STUDY}` = 'resumed' and tags.`{tags.ROLE}` = 'study'")
    assert len(parent) == 1
    assert parent[0].info.status == "FINISHED"
    runs = [r for r in T.child_runs(stores["tracking_uri"], exp.experiment_id,
                                    parent[0].info.run_id)
            if r.data.tags.get(tags.ROLE) == "trial"]
    trial_ids = [r.data.tags[tags.TRIAL] for r in runs]
    assert len(set(trial_ids)) == len(trial_ids)  # no duplicate run for a trial
    counted = [r for r in runs if r.data.tags.get(tags.STATE) == "COMPLETE"]
    assert len(counted) == 5 and all(r.info.status == "FINISHED" for r in counted)
    assert {r.data.tags[tags.TRIAL] for r in counted} == {
        t.user_attrs[TUNE_TRIAL_ID] for t in trials if t.state.name == "COMPLETE"}
    others = [r for r in runs if r not in counted]
    assert len(others) <= len(lost)
    for r in others:  # killed with the driver, or finished before it could be recorded
        assert r.info.status in ("KILLED", "FINISHED")
        assert r.data.tags[tags.STATE] == "LOST"
        assert r.data.tags[tags.FAILURE] == LOST


def test_job_entrypoint_sigterm_ends_every_run_killed(ray_cluster, tmp_path, credit_home):
    """`ray job stop` sends SIGTERM to the runner: its parent and trial runs end KILLED."""
    stores = _stores(tmp_path, "stopped")
    spec = StudySpec(space="mnist-fc-backprop", max_trials=6, parallel_trials=2, epochs=40,
                     batches_per_epoch=40, dataset="mnist-5k", **stores)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    # The store exists before the driver starts: polling a sqlite store while another
    # process creates it races MLflow's schema migrations ("table ... already exists").
    T.ensure_experiment(stores["tracking_uri"], "credit-search",
                        (tmp_path / "artifacts").as_uri())
    driver = subprocess.Popen([sys.executable, "-m", "service.runner.job", str(spec_file)],
                              env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    client = MlflowClient(stores["tracking_uri"])

    def trial_runs():
        exp = client.get_experiment_by_name("credit-search")
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id])
        return [r for r in runs if r.data.tags.get(tags.ROLE) == "trial"]

    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        try:
            started = [r for r in trial_runs() if "test_error" in r.data.metrics]
        except Exception:  # the store is being created
            started = []
        if started:
            break
        time.sleep(0.5)
    assert driver.poll() is None, driver.stderr.read()[-2000:]
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    exp = client.get_experiment_by_name("credit-search")
    parents = T.find_runs(stores["tracking_uri"], exp.experiment_id,
                          f"tags.`{tags.STUDY}` = 'stopped' and tags.`{tags.ROLE}` = 'study'")
    assert [p.info.status for p in parents] == ["KILLED"]
    runs = trial_runs()
    assert runs and all(r.info.status in ("KILLED", "FINISHED") for r in runs)
    assert any(r.info.status == "KILLED" for r in runs)


#: What a study's driver never imports (STYLE.md 13): it trains nothing; Ray's workers
#: import these for the trials (``service.runner.worker_code``).
TRAINING = ("torch", "torchvision", "trainables.tune", "trainables.trainer")
REPO = Path(__file__).resolve().parents[2]


def _driver(script: str, timeout: float) -> dict:
    """Run ``script`` in a fresh interpreter (a study's driver); the last stderr line is
    its JSON answer, to which this adds the training modules it had imported."""
    # its peak memory from VmHWM: ru_maxrss counts the memory of the process that spawned it
    code = ("import json, re, sys\n" + script +
            f"\nanswer['training'] = sorted(m for m in {TRAINING!r} if m in sys.modules)"
            "\nstatus = open('/proc/self/status').read()"
            "\nanswer['peak_rss_mb'] = int(re.search(r'VmHWM:\\s*(\\d+)', status)[1]) // 1024"
            "\nprint(json.dumps(answer), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_the_drivers_modules_import_no_torch():
    answer = _driver("import service.runner.job, service.runner.worker_code\nanswer = {}", 120)
    assert answer["training"] == []



@pytest.mark.slow
def test_a_study_driver_never_imports_torch(ray_cluster, tmp_path):
    """A whole study — a population trial, then the final evaluation's lone trial — in a
    driver that never imports torch: only Ray's workers, which train, do. Its peak memory
    is printed (issue "scale": under 400 MB, where importing torch alone took ~900 MB)."""
    stores = _stores(tmp_path, "torchless")
    spec = StudySpec(space="mnist-fc-backprop", max_trials=2, population=2, parallel_trials=1,
                     final_seeds=1, epochs=1, batches_per_epoch=5, dataset="mnist-5k",
                     **stores)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    answer = _driver("from service.runner.job import main\n"
                     f"answer = {{'rc': main([{str(spec_file)!r}])}}", 400)
    print(f"study driver: peak RSS {answer['peak_rss_mb']} MB")
    assert answer["rc"] == 0
    assert answer["training"] == []
    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name("credit-search")
    runs = client.search_runs([exp.experiment_id], f"tags.`{tags.STUDY}` = 'torchless'")
    roles = sorted(r.data.tags.get(tags.ROLE) for r in runs)
    assert roles == ["final", "study", "trial", "trial"]  # every trial trained, elsewhere
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("test_error" in r.data.metrics for r in runs if r.data.tags[tags.ROLE] != "study")


@pytest.mark.parametrize("fields,where", [
    (dict(name="../etc"), "name"),
    (dict(name="Upper"), "name"),
    (dict(space="no-such-preset"), "space"),
    (dict(sampler="grid"), "sampler"),
    (dict(max_trials=0), "max_trials"),
    (dict(parallel_trials=-1), "parallel_trials"),
    (dict(epochs=0), "epochs"),
    (dict(resources={"cpu": 0}), "resources.cpu"),
    (dict(resources={"gpu": -1}), "resources.gpu"),
    (dict(dataset="cifar10"), "dataset"),
    (dict(objective={"metric": "x", "mode": "best"}), "objective.mode"),
    (dict(final_seeds=-2), "final_seeds"),
    (dict(colour="red"), "colour"),
])
def test_bad_spec_names_the_field(fields, where):
    base = dict(name="ok", space="mnist-fc-backprop")
    base.update(fields)
    with pytest.raises((ValidationError, ValueError)) as info:
        StudySpec(**base)
    assert where.split(".")[0] in str(info.value)


def test_trial_of_a_stopped_study_closes_its_run_and_does_not_train(tmp_path):
    """The race the driver's stop leaves: a trial actor that starts after the parent run
    was ended must not leave a RUNNING child behind, nor train."""
    from trainables.config import TrainConfig
    from trainables.errors import CreditError
    from trainables.trainer import Trainer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = T.ensure_experiment(uri, "credit-search", str(tmp_path / "artifacts"))
    client = MlflowClient(uri)
    parent = client.create_run(exp).info.run_id
    logger = TL.MlflowTrialLogger(uri, exp, parent, "late", trial_id="t1")
    config = TrainConfig(experiment="mnist-fc", rule="backprop", dataset="mnist-5k", epochs=2,
                         batches_per_epoch=3)

    live = Trainer(config, callbacks=[logger])  # while the study runs, the trial trains
    live.fit()
    assert client.get_run(logger.run_id).info.status == "FINISHED"

    client.set_terminated(parent, status="KILLED")
    late = TL.MlflowTrialLogger(uri, exp, parent, "late", trial_id="t2")
    trainer = Trainer(config, callbacks=[late])
    with pytest.raises(CreditError, match="has ended"):
        trainer.fit()
    assert trainer.epoch == 0
    run = client.get_run(late.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[tags.STATE] == "STALE"


def _waiting(spec) -> str:
    """The study's waiting message, read without touching the storage: opening it with
    Optuna would create its tables, racing the driver that creates them."""
    path = Path(spec.storage.removeprefix("sqlite:///"))
    if not path.exists():
        return ""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute(
                "SELECT a.value_json FROM study_user_attributes a JOIN studies s "
                "ON a.study_id = s.study_id WHERE s.study_name = ? AND a.key = ?",
                (spec.name, WAITING_ATTR)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # no tables yet
        return ""
    return json.loads(row[0]) if row else ""


def test_a_study_waits_for_a_node_that_can_hold_its_trials(ray_cluster, tmp_path,
                                                           monkeypatch):
    """Elastic: no alive node has the resource the trials ask for → the study says it
    waits; a node that joins with it takes the trial; the study SUCCEEDS."""
    monkeypatch.setenv("CREDIT_RESOURCE_WAIT_S", "300")
    spec = StudySpec(space="mnist-fc-backprop", max_trials=1, epochs=1, batches_per_epoch=5,
                     dataset="mnist-5k", resources={"custom": {"late_host": 1}},
                     **_stores(tmp_path, "elastic"))
    seen: dict = {}

    def join_late(stop: threading.Event) -> None:
        while not stop.is_set() and not (message := _waiting(spec)):
            time.sleep(0.5)
        seen["message"] = message
        seen["node"] = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start",
             f"--address={os.environ['RAY_ADDRESS']}", "--node-ip-address=127.0.0.2",
             "--num-cpus=1", "--num-gpus=0", '--resources={"late_host": 1}',
             "--disable-usage-stats", "--block"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        result = _run_study_beside(spec, join_late)
    finally:
        if "node" in seen:
            os.killpg(seen["node"].pid, signal.SIGTERM)
            seen["node"].wait(timeout=60)
    assert seen.get("message", "").startswith("waiting for resources: no alive node"), seen
    assert "late_host=1" in seen["message"]
    assert result.status == "SUCCEEDED" and result.counts["complete"] == 1, result.message
    assert _waiting(spec) == ""  # the wait is over, and says so


def test_a_study_no_node_can_hold_fails_naming_what_it_waited_for(ray_cluster, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("CREDIT_RESOURCE_WAIT_S", "4")
    spec = StudySpec(space="mnist-fc-backprop", max_trials=2, epochs=1, batches_per_epoch=5,
                     dataset="mnist-5k", resources={"custom": {"no_such_host": 1}},
                     **_stores(tmp_path, "no-room"))
    start = time.monotonic()
    result = run_study(spec)
    assert result.status == "FAILED"
    assert "no alive node could hold a trial (CPU=1, no_such_host=1) for 4 s" in result.message
    assert time.monotonic() - start < 120
    assert result.counts["complete"] == 0 and result.counts["running"] == 0
