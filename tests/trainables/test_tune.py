"""``trainables.tune``: the Ray Tune trainable, run by a real (local) Tune."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainables.config import TrainConfig
from trainables.tune import CHECKPOINT_FILE, train_trial, trial_threads


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
