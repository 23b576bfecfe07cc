"""Populations: each member of a stacked population trains exactly as it would alone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainables.config import TrainConfig
from trainables.data import load_dataset
from trainables.errors import ConfigError
from trainables.population import PopulationTrainer
from trainables.trainer import Callback, Trainer

FAST = dict(batches_per_epoch=25, metrics_batch_size=64, max_test_samples=400, epochs=3)
#: Each rule with the settings it is searched with; members differ in every number.
RULES = [
    dict(rule="backprop"),
    dict(rule="backprop", optimizer="adam"),
    dict(rule="feedback_alignment", momentum=0.9),
    dict(rule="direct_feedback_alignment"),
    dict(rule="node_perturbation", feedback_solver="sgd"),
    dict(rule="node_perturbation", feedback_solver="lstsq"),
    dict(rule="node_perturbation_direct", feedback_solver="lstsq"),
    dict(rule="node_perturbation_direct", feedback_solver="sgd", optimizer="adam"),
    dict(rule="matched"),
    dict(rule="kolen_pollack", weight_decay=0.01),
    dict(rule="synthetic_gradient", feedback_solver="sgd"),
]
#: Member numbers: η, c, η_B, momentum / weight decay where the rule takes them.
MEMBERS = [dict(lr=0.05, noise_std=0.01, feedback_lr=0.02),
           dict(lr=0.2, noise_std=0.05, feedback_lr=0.005),
           dict(lr=0.1, noise_std=0.002, feedback_lr=0.05)]


def _member_configs(base: dict, seeds=(0, 0, 0), **extra) -> list[TrainConfig]:
    configs = []
    for numbers, seed in zip(MEMBERS, seeds, strict=True):
        fields = {**FAST, **base, **numbers, **extra, "seed": seed}
        if fields.get("optimizer") == "adam":
            fields["lr"] = fields["lr"] / 50
        if base["rule"] == "kolen_pollack":
            fields["weight_decay"] = numbers["lr"] / 10
        if "momentum" in base:
            fields["momentum"] = {0.05: 0.9, 0.2: 0.5, 0.1: 0.0}[numbers["lr"]]
        configs.append(TrainConfig(**fields))
    return configs


@pytest.fixture(scope="module")
def data64():
    data = load_dataset("mnist-5k")
    return dataclasses.replace(data, x_train=data.x_train.double(), x_test=data.x_test.double())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _solo_and_population(configs, data):
    solos = []
    for c in configs:
        tr = Trainer(c, dataset=data)
        tr.fit()
        solos.append(tr)
    pop = PopulationTrainer(configs, dataset=data)
    pop.fit()
    return solos, pop


def _compare(solos, pop, tol):
    worst = 0.0
    for k, solo in enumerate(solos):
        key = str(k)
        row = pop.keys.index(key)
        ours = [t[row] for t in pop.net.parameters()]
        ours += [b[row] for b in pop.rule.feedback if b is not None]
        theirs = solo.net.parameters() + [b for b in solo.rule.feedback if b is not None]
        for a, b in zip(ours, theirs, strict=True):
            worst = max(worst, _rel(a, b))
        hist = pop.members[key].history
        assert len(hist) == len(solo.history)
        for got, want in zip(hist, solo.history, strict=True):
            assert set(got) == set(want)
            for name, value in want.items():
                if name == "time_s" or (isinstance(value, float) and math.isnan(value)):
                    continue
                if "angle" in name and abs(value) < 1e-3:
                    # an angle of ~0 (backprop's own pathway) is acos(1 − ε): the rounding
                    # of cos, ~1e-16, becomes ~1e-7 degrees; both are 0 to 1e-5 degrees
                    assert abs(got[name] - value) < 1e-5, (name, got[name], value)
                    continue
                err = abs(got[name] - value) / max(abs(value), 1e-12)
                worst = max(worst, err)
                assert err <= tol, (name, got[name], value)
    assert worst <= tol
    return worst


@pytest.mark.parametrize("base", RULES, ids=lambda b: "-".join(str(v) for v in b.values()))
def test_every_member_equals_its_lone_run_float64(base, data64):
    torch.set_default_dtype(torch.float64)
    try:
        solos, pop = _solo_and_population(_member_configs(base), data64)
    finally:
        torch.set_default_dtype(torch.float32)
    assert pop.net.weights[0].dtype == torch.float64
    _compare(solos, pop, 1e-10)


def test_members_with_their_own_seeds_equal_their_lone_runs(data64):
    torch.set_default_dtype(torch.float64)
    try:
        configs = _member_configs(dict(rule="node_perturbation", feedback_solver="lstsq"),
                                  seeds=(3, 0, 3))
        solos, pop = _solo_and_population(configs, data64)
    finally:
        torch.set_default_dtype(torch.float32)
    assert len(pop.seeds) == 2
    _compare(solos, pop, 1e-10)
    # members of different seeds really differ from the start
    assert not torch.equal(pop.net.weights[0][0], pop.net.weights[0][1])


@pytest.mark.parametrize("base", [dict(rule="node_perturbation", feedback_solver="lstsq"),
                                  dict(rule="backprop"), dict(rule="direct_feedback_alignment")])
def test_float32_members_have_their_lone_test_error(base):
    data = load_dataset("mnist-5k")
    configs = _member_configs(base, **{"max_test_samples": None})
    solos, pop = _solo_and_population(configs, data)
    for k, solo in enumerate(solos):
        got = pop.members[str(k)].history[-1]["test_error"]
        assert round(got, 3) == round(solo.history[-1]["test_error"], 3)


def test_a_diverging_member_fails_alone_and_the_rest_go_on(data64):
    configs = _member_configs(dict(rule="node_perturbation", feedback_solver="sgd"))
    configs[1] = configs[1].model_copy(update={"lr": 1e4})
    events = []

    class Watch(Callback):
        def __init__(self, key):
            self.key = key

        def on_fit_error(self, trainer, error):
            events.append((self.key, type(error).__name__, trainer.epoch))

    pop = PopulationTrainer(configs, callbacks={k: [Watch(k)] for k in "012"})
    results = pop.fit()
    assert set(results) == {"0", "2"}
    assert events == [("1", "DivergenceError", 0)]
    assert "diverged" in pop.failed["1"] and "epoch 1" in pop.failed["1"]
    lone = Trainer(configs[2])
    lone.fit()
    assert results["2"].final["test_error"] == pytest.approx(lone.history[-1]["test_error"],
                                                             abs=1e-3)


def test_stopped_members_leave_and_a_checkpoint_resumes_bit_for_bit(tmp_path):
    configs = _member_configs(dict(rule="node_perturbation", feedback_solver="lstsq"),
                              epochs=4)
    straight = PopulationTrainer(configs)
    straight.run_epoch()
    straight.stop(["1"])
    straight.fit()

    first = PopulationTrainer(configs)
    first.run_epoch()
    first.stop(["1"])
    first.run_epoch()
    state = first.state_dict()
    torch.save(state, tmp_path / "pop.pt")
    resumed = PopulationTrainer(configs)
    resumed.load_state_dict(torch.load(tmp_path / "pop.pt", weights_only=False))
    assert resumed.keys == ["0", "2"] and resumed.epoch == 2
    resumed.fit()
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    strip = lambda h: {k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
    assert strip(straight.members["0"].history[-1]) == strip(resumed.members["0"].history[-1])
    assert len(resumed.members["1"].history) == 1 and resumed.stopped == ["1"]


def test_members_must_share_the_structure():
    a = TrainConfig(**FAST, rule="backprop")
    b = TrainConfig(**FAST, rule="feedback_alignment", batch_size=16)
    with pytest.raises(ConfigError, match="batch_size, rule"):
        PopulationTrainer([a, b])


#: The CIFAR-10 CNN (its real layers), a few small batches of random images.
CONV = dict(experiment="cifar10-cnn", dataset="cifar10", batch_size=4, batches_per_epoch=1,
            epochs=2, metrics_batch_size=4, max_test_samples=8)
#: The members' η are the MLP's / this: larger ones make the CNN on random images explode
#: (weights of 1e6 and more), where every rounding grows with the weights.
CONV_LR_DIVISOR = 100
#: Its rules: direct ones (the paper's CIFAR-10 network), and layer-wise feedback learned
#: through convolutions (the SGD solver's gradient of a convolution).
#: (Each takes 10-30 s here: one in the default run, the rest slow.)
CONV_RULES = [
    dict(rule="node_perturbation_direct", feedback_solver="lstsq"),
    *(pytest.param(r, marks=pytest.mark.slow) for r in (
        dict(rule="node_perturbation", feedback_solver="sgd"),
        dict(rule="backprop"),
        dict(rule="direct_feedback_alignment"),
        dict(rule="node_perturbation_direct", feedback_solver="sgd", optimizer="adam"),
        dict(rule="feedback_alignment", momentum=0.9))),
]


def _tiny_cifar_like(n_train: int = 8, n_test: int = 8):
    from trainables.data import Dataset
    g = torch.Generator().manual_seed(0)
    dtype = torch.get_default_dtype()
    return Dataset(name="cifar10", x_train=torch.randn(n_train, 3, 32, 32, generator=g,
                                                       dtype=dtype),
                   y_train=torch.randint(0, 10, (n_train,), generator=g),
                   x_test=torch.randn(n_test, 3, 32, 32, generator=g, dtype=dtype),
                   y_test=torch.randint(0, 10, (n_test,), generator=g), num_classes=10,
                   input_shape=(3, 32, 32), description="random")


@pytest.mark.parametrize("base", CONV_RULES, ids=lambda b: "-".join(str(v) for v in b.values()))
def test_convolutional_members_equal_their_lone_runs_float64(base):
    """Grouped convolutions: every member of a population of the CIFAR-10 CNN (members of
    two training seeds: shared and own batches) is its lone run, weights and metrics."""
    torch.set_default_dtype(torch.float64)
    try:
        configs = [TrainConfig(**{**c.model_dump(), **CONV, "lr": c.lr / CONV_LR_DIVISOR})
                   for c in _member_configs(base, seeds=(0, 1, 0))]
        solos, pop = _solo_and_population(configs, _tiny_cifar_like())
    finally:
        torch.set_default_dtype(torch.float32)
    assert pop.net.weights[0].shape == (3, 32, 3, 3, 3)
    _compare(solos, pop, 1e-10)
