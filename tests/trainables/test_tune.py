"""``trainables.tune``: the Ray Tune trainable, run by a real (local) Tune."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from trainables.config import TrainConfig
from trainables.tune import (
    CHECKPOINT_FILE,
    CHECKPOINT_PERIOD_S,
    CheckpointPace,
    train_trial,
    trial_threads,
)


def testtrial_threads_follow_the_trial_cpus_up_to_what_the_model_uses():
    mlp = TrainConfig(experiment="mnist-fc")
    assert trial_threads(mlp, 4) == 1  # an MLP step is too small to split
    assert trial_threads(mlp, 0.5) == 1
    cnn = TrainConfig(experiment="cifar10-cnn")
    assert trial_threads(cnn, 2) == 2


@pytest.fixture()
def ray_local(tmp_path):
    """The session's Ray if one is up (the service tests' cluster), else a private one."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started and os.environ.get("RAY_ADDRESS"):  # the session's cluster, left by a test
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False,
                 _node_ip_address=os.environ.get("CREDIT_RAY_NODE_IP"),
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parents[2])}})
    elif started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                 _temp_dir=f"/tmp/credit-tune-{os.getpid()}")
    yield ray
    if started:
        ray.shutdown()


def test_train_trial_reports_every_epoch_with_a_checkpoint(ray_local, tmp_path):
    from ray import tune

    def factory(config, trial_id):  # runs in the trial's worker: extra trainer callbacks
        assert isinstance(config, TrainConfig) and trial_id
        return []

    config = TrainConfig(dataset="mnist-5k", epochs=2, batches_per_epoch=3).model_dump()
    tuner = tune.Tuner(tune.with_parameters(train_trial, callback_factory=factory),
                       param_space=config,
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    result = tuner.fit()[0]
    assert result.error is None
    assert result.metrics["epoch"] == 2
    assert 0.0 <= result.metrics["test_error"] <= 1.0
    assert len(result.metrics_dataframe) == 2  # one report per epoch
    with result.checkpoint.as_directory() as directory:
        assert (os.path.getsize(os.path.join(directory, CHECKPOINT_FILE))) > 0


def test_a_trial_checkpoints_its_first_and_last_epochs_and_one_a_period_between():
    now = [0.0]
    pace = CheckpointPace(period_s=5.0, clock=lambda: now[0])
    due = []
    for epoch in range(1, 11):
        now[0] += 1.5  # an epoch takes 1.5 s
        due.append(pace.due(epoch == 10))
    # epoch 1 (t=1.5), then t >= 6.5: epoch 5 (t=7.5), epoch 9 (t=13.5), the last
    assert [e for e, d in zip(range(1, 11), due, strict=True) if d] == [1, 5, 9, 10]
    slow = CheckpointPace(period_s=5.0, clock=lambda: now[0])
    for epoch in range(1, 4):
        now[0] += 6.0  # epochs longer than the period: every one
        assert slow.due(epoch == 3)


def test_a_trial_of_quick_epochs_checkpoints_no_more_than_its_pace(ray_local, tmp_path):
    """Tune keeps every checkpoint here (no num_to_keep): the first epoch's and the last
    are there, and at most one per CHECKPOINT_PERIOD_S between; every epoch reported."""
    from ray import tune

    epochs = 12
    config = TrainConfig(dataset="mnist-5k", epochs=epochs, batches_per_epoch=1).model_dump()
    tuner = tune.Tuner(train_trial, param_space=config,
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    started = time.monotonic()
    result = tuner.fit()[0]
    took = time.monotonic() - started
    assert result.error is None
    assert len(result.metrics_dataframe) == epochs
    kept = sorted(int(metrics["epoch"]) for _, metrics in result.best_checkpoints)
    assert kept[0] == 1 and kept[-1] == epochs, kept
    assert len(kept) <= 2 + took / CHECKPOINT_PERIOD_S, (kept, took)
    if took < CHECKPOINT_PERIOD_S:  # the whole trial inside one period: its two ends only
        assert kept == [1, epochs]
