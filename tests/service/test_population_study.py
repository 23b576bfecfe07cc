"""Population studies on real Ray, MLflow and Optuna: K configurations per Ray trial, each
member its own Optuna trial, MLflow run and value."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from service.records import tags
from service.records.optuna_trials import TUNE_TRIAL_ID
from service.spec import StudySpec
from service.trials import POPULATION_ATTR
from tests.service.processes import KILLED_TRIAL_EPOCHS
from tests.service.test_study import DIVERGING, TINY, _children, _optuna_trials, _stores, run_study
from trainables.experiments import EXPERIMENTS


def test_population_members_are_trials_with_their_own_records(ray_cluster, tmp_path):
    spec = StudySpec(space="mnist-fc-node-perturbation", max_trials=6, population=4,
                     parallel_trials=2, sampler="random", seed=1, **TINY,
                     **_stores(tmp_path, "pop"))
    seen = []
    result = run_study(spec, progress=seen.append)
    assert result.status == "SUCCEEDED"
    assert result.counts["complete"] == 6 and len(result.trials) == 6
    assert seen[-1]["counts"]["complete"] == 6
    trials = _optuna_trials(spec)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    # 6 trials in two Ray trials: one population of 4, then one of the 2 left
    populations = {t.user_attrs[POPULATION_ATTR] for t in trials}
    assert sorted(sum(t.user_attrs[POPULATION_ATTR] == p for t in trials)
                  for p in populations) == [2, 4]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    runs = {r.data.tags[tags.TRIAL]: r for r in _children(result)}
    assert set(runs) == {t.user_attrs[TUNE_TRIAL_ID] for t in trials}
    client = MlflowClient(result.tracking_uri)
    for t in trials:
        run = runs[t.user_attrs[TUNE_TRIAL_ID]]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == pytest.approx(t.params["lr"])
        history = client.get_metric_history(run.info.run_id, "test_error")
        assert [m.step for m in history] == [1, 2]
        assert history[-1].value == pytest.approx(t.value)  # its own value, told alone
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "plots/learning_curves.png" in arts
    assert result.best_value == min(t.value for t in trials)
    assert runs[result.best_trial_id].info.run_id == result.best_run_id


@pytest.mark.slow
def test_a_diverging_member_fails_alone_in_its_population(ray_cluster, tmp_path):
    spec = StudySpec(space=DIVERGING, max_trials=4, population=4, seed=0, **TINY,
                     **_stores(tmp_path, "popdiv"))
    result = run_study(spec)
    assert result.status == "SUCCEEDED"
    trials = _optuna_trials(spec)
    diverged = [t for t in trials if t.params["lr"] == 5000.0]
    assert diverged and len(diverged) < 4
    for t in trials:
        assert t.state.name == ("FAIL" if t.params["lr"] == 5000.0 else "COMPLETE")
    assert result.counts["failed"] == len(diverged)
    runs = {r.data.tags[tags.TRIAL]: r for r in _children(result)}
    for t in diverged:
        run = runs[t.user_attrs[TUNE_TRIAL_ID]]
        assert run.info.status == "FAILED"
        assert "diverged in epoch 1" in run.data.tags[tags.FAILURE]
    assert all(s.error and "diverged" in s.error for s in result.trials if s.state == "FAILED")


@pytest.mark.slow
def test_early_stopping_prunes_members_not_the_population(ray_cluster, tmp_path):
    spec = StudySpec(space="mnist-fc-feedback-alignment", max_trials=6, population=6,
                     early_stopping={"grace_period": 1, "reduction_factor": 3}, seed=0,
                     epochs=3, batches_per_epoch=10, dataset="mnist-5k",
                     **_stores(tmp_path, "popasha"))
    result = run_study(spec)
    states = sorted(t.state.name for t in _optuna_trials(spec))
    # rung 1: the best 2 of 6 go on; rung 3 is the last epoch: both complete
    assert states == ["COMPLETE"] * 2 + ["PRUNED"] * 4
    assert result.counts == {**result.counts, "complete": 2, "pruned": 4}
    client = MlflowClient(result.tracking_uri)
    for run in _children(result):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_error")]
        if run.data.tags[tags.STATE] == "PRUNED":
            assert steps == [1] and run.info.status == "KILLED"
        else:
            assert steps == [1, 2, 3] and run.info.status == "FINISHED"


@pytest.mark.parametrize("fields, where", [
    (dict(population=0), "population"), (dict(population="many"), "population"),
])
def test_bad_population_names_the_field(fields, where, tmp_path):
    base = dict(space="mnist-fc-backprop", **_stores(tmp_path, "bad"))
    with pytest.raises(ValidationError, match=where):
        StudySpec(**{**base, **fields})


def test_a_convolutional_population_is_sized_by_its_activations(tmp_path):
    """The CIFAR-10 CNN stacks too (grouped convolutions); ``auto`` counts what a member's
    feature maps hold: conv1's 32 × 32² units per image dominate, not its weights."""
    from trainables.memory import layer_units, member_bytes

    spec = StudySpec(space="cifar10-cnn-backprop", population="auto", max_trials=5000,
                     parallel_trials=1, resources={"gpu": 1}, **_stores(tmp_path, "cnn"))
    cfg = spec.trial_config({})
    layers = EXPERIMENTS.get("cifar10-cnn").build_layers()
    assert layer_units(layers) == [32 * 32 * 32, 128 * 16 * 16, 256 * 8 * 8, 2048, 2048, 10]
    per = member_bytes(cfg)
    assert per > 4 * cfg.batch_size * 2 * 6 * 32 * 32 * 32
    assert spec.members(per) == min(1024, (8 << 30) // per)


def test_auto_population_fills_the_memory_it_is_given(tmp_path):
    spec = StudySpec(space="mnist-fc-backprop", population="auto", max_trials=5000,
                     parallel_trials=2, **_stores(tmp_path, "auto"))
    from trainables.memory import member_bytes
    per = member_bytes(spec.trial_config({}))
    assert spec.members(per) == min(1024, 2500, (1 << 30) // per)
    assert spec.members(1 << 29) == 2  # 1 GiB per CPU / 512 MiB each
    small = spec.model_copy(update={"max_trials": 10})
    assert small.members(per) == 5  # 10 trials over 2 parallel Ray trials
    assert optuna  # imported for the storage-backed tests above


@pytest.mark.slow
def test_a_gpu_trial_on_a_node_whose_torch_sees_none_is_an_infrastructure_failure(
        ray_cluster, tmp_path):
    """A node that tells Ray it has a GPU (``--num-gpus 1``) on this CPU-only machine: the
    trial placed there fails as an infrastructure error that names the node."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    node = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start",
         f"--address={os.environ['RAY_ADDRESS']}", "--node-ip-address=127.0.0.2",
         "--num-cpus=1", "--num-gpus=1", "--disable-usage-stats", "--block"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import ray
        deadline = time.time() + 60
        while ray.cluster_resources().get("GPU", 0) < 1 and time.time() < deadline:
            time.sleep(0.5)
        spec = StudySpec(space="mnist-fc-backprop", max_trials=1, epochs=1,
                         batches_per_epoch=5, dataset="mnist-5k", max_trial_restarts=0,
                         resources={"gpu": 0.5}, **_stores(tmp_path, "gpu"))
        result = run_study(spec)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
    assert result.status == "FAILED"
    [trial] = result.trials
    assert trial.failure_kind == "infrastructure"
    assert "DeviceUnavailableError: node 127.0.0.2" in trial.error
    assert "sees no CUDA device" in trial.error
    assert "infrastructure" in result.message


@pytest.mark.slow
def test_a_population_whose_worker_dies_resumes_as_one(ray_cluster, tmp_path):
    """The worker training a population is SIGKILLed after its first epoch: the population
    restarts from its checkpoint as one, and every member completes with one point per
    epoch in its own run and the restart counted on it."""
    from service.records.optuna_trials import RESTARTS_ATTR
    from tests.service.test_study import _kill_after_first_epoch, _run_study_beside

    spec = StudySpec(space="mnist-fc-backprop", max_trials=3, population=3,
                     epochs=KILLED_TRIAL_EPOCHS, batches_per_epoch=150, dataset="mnist-5k",
                     **_stores(tmp_path, "popkill"))
    box: dict = {}
    result = _run_study_beside(spec, lambda stop: _kill_after_first_epoch(box, tmp_path, stop))
    assert "killed_at" in box, "no trial worker was found to kill"
    assert result.status == "SUCCEEDED", result.message
    assert result.counts["complete"] == 3
    trials = _optuna_trials(spec)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert all(t.user_attrs[RESTARTS_ATTR] == 1 for t in trials)
    client = MlflowClient(spec.tracking_uri)
    runs = _children(result)
    assert len(runs) == 3
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[tags.RESTARTS] == "1"
        history = client.get_metric_history(run.info.run_id, "test_loss")
        assert sorted(m.step for m in history) == list(range(1, KILLED_TRIAL_EPOCHS + 1))
