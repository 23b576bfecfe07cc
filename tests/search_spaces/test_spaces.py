"""Search spaces: presets, validation messages, JSON round trips, Optuna translation."""

from __future__ import annotations

import json
import math
import pickle

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search_spaces import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    SearchSpaceError,
    list_presets,
    load_space,
    parse_space,
)
from trainables.config import TrainConfig
from trainables.errors import ConfigError
from trainables.experiments import EXPERIMENTS

REQUIRED_PRESETS = {
    "mnist-fc-node-perturbation",
    "mnist-fc-feedback-alignment",
    "mnist-fc-backprop",
    "mnist-autoencoder-node-perturbation",
    "mnist-autoencoder-feedback-alignment",
    "mnist-autoencoder-backprop",
    "mnist-autoencoder-backprop-adam",
    "mnist-autoencoder-matched",
    "cifar10-cnn-node-perturbation-direct",
    "cifar10-cnn-direct-feedback-alignment",
    "cifar10-cnn-backprop",
}


def _valid(**changes) -> dict:
    space = {
        "name": "my-space",
        "description": "a test space",
        "experiment": "mnist-fc",
        "rule": "node_perturbation",
        "fixed": {"momentum": 0.9},
        "params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    }
    space.update(changes)
    return space


# ------------------------------------------------------------------- presets


def test_required_presets_exist():
    assert REQUIRED_PRESETS <= set(list_presets())


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_is_valid_and_consistent(name):
    space = load_space(name)
    assert space.name == name
    assert name.startswith(space.experiment + "-")
    rule = name.removeprefix(space.experiment + "-").removesuffix("-adam")
    assert rule.replace("-", "_") == space.rule
    assert space.description == list_presets()[name]
    assert "batch-mean" in space.description  # the ×batch note on learning rates
    classification = EXPERIMENTS.get(space.experiment).classification
    assert space.objective.metric == ("test_error" if classification else "test_loss")
    assert space.objective.mode == "min"

    distributions = space.to_optuna()
    assert set(distributions) == set(space.params)
    for dist in distributions.values():
        assert isinstance(dist, FloatDistribution) and dist.log
        assert math.isclose(math.log10(dist.high / dist.low), 3)  # three decades each

    mid = space.midpoint()
    config = space.trial_config(mid, epochs=2, seed=5)
    assert isinstance(config, TrainConfig)
    assert (config.experiment, config.rule, config.epochs, config.seed) == (
        space.experiment, space.rule, 2, 5)
    for key, value in {**space.fixed, **mid}.items():
        assert getattr(config, key) == value
    for key, dist in space.params.items():
        assert dist.low < mid[key] < dist.high


def test_preset_ranges_and_optuna_translation():
    space = load_space("mnist-fc-node-perturbation")
    assert space.fixed == {"batch_size": 32, "momentum": 0.9, "feedback_solver": "sgd"}
    assert space.to_optuna() == {
        "lr": FloatDistribution(3e-4, 3e-1, log=True),
        "noise_std": FloatDistribution(1e-4, 1e-1, log=True),
        "feedback_lr": FloatDistribution(1e-3, 1.0, log=True),
    }
    assert math.isclose(space.midpoint()["noise_std"], 10**-2.5)
    adam = load_space("mnist-autoencoder-backprop-adam")
    assert adam.rule == "backprop" and adam.fixed["optimizer"] == "adam"
    assert "momentum" not in adam.fixed
    assert (adam.params["lr"].low, adam.params["lr"].high) == (1e-5, 1e-2)
    cnn = load_space("cifar10-cnn-node-perturbation-direct")
    assert cnn.fixed["batch_size"] == 128
    assert (cnn.params["feedback_lr"].low, cnn.params["feedback_lr"].high) == (1e-4, 1e-1)


def test_int_and_categorical_translate_to_optuna():
    space = parse_space(_valid(params={
        "batch_size": {"type": "int", "low": 16, "high": 128, "step": 16},
        "metrics_batch_size": {"type": "int", "low": 64, "high": 1024, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "momentum": {"type": "float", "low": 0.0, "high": 0.9, "step": 0.3},
    }, fixed={}))
    assert space.to_optuna() == {
        "batch_size": IntDistribution(16, 128, step=16),
        "metrics_batch_size": IntDistribution(64, 1024, log=True),
        "optimizer": CategoricalDistribution(("sgd", "adam")),
        "momentum": FloatDistribution(0.0, 0.9, step=0.3),
    }
    assert space.midpoint() == {"batch_size": 64, "metrics_batch_size": 256,
                                "optimizer": "adam", "momentum": pytest.approx(0.3)}
    assert isinstance(space.params["batch_size"], IntParam)
    assert isinstance(space.params["optimizer"], CategoricalParam)
    assert isinstance(space.params["momentum"], FloatParam)


def test_objective_can_be_given():
    space = parse_space(_valid(objective={"metric": "best_test_loss", "mode": "min"}))
    assert (space.objective.metric, space.objective.mode) == ("best_test_loss", "min")


# ---------------------------------------------------------------- bad spaces

_LR = {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}

BAD_SPACES = {
    "unknown-field": (_valid(params={"lrr": _LR}), "params.lrr", "unknown TrainConfig field"),
    "low-not-below-high": (
        _valid(params={"lr": {"type": "float", "low": 1.0, "high": 0.1}}),
        "params.lr", "low must be < high (got low=1.0, high=0.1)"),
    "log-low-zero": (
        _valid(params={"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}),
        "params.lr", "log=true needs low > 0"),
    "int-log-low-zero": (
        _valid(params={"batch_size": {"type": "int", "low": 0, "high": 64, "log": True}}),
        "params.batch_size", "log=true needs low >= 1"),
    "empty-choices": (
        _valid(params={"optimizer": {"type": "categorical", "choices": []}}),
        "params.optimizer.choices", "must not be empty"),
    "duplicate-choices": (
        _valid(params={"optimizer": {"type": "categorical", "choices": ["sgd", "adam", "sgd"]}}),
        "params.optimizer.choices", "duplicate choice"),
    "choice-outside-config": (
        _valid(params={"optimizer": {"type": "categorical", "choices": ["sgd", "rmsprop"]}}),
        "params.optimizer", '"rmsprop" is invalid'),
    "noise-std-low-zero": (
        _valid(params={"noise_std": {"type": "float", "low": 0, "high": 0.1}}),
        "params.noise_std", "low=0.0 is out of range: must be > 0"),
    "lr-high-1e9": (  # every rate, noise and count has an upper bound
        _valid(params={"lr": {"type": "float", "low": 1, "high": 1e9, "log": True}}),
        "params.lr", "high=1000000000.0 is out of range: must be <= 10000"),
    "noise-std-high": (
        _valid(params={"noise_std": {"type": "float", "low": 0.01, "high": 100}}),
        "params.noise_std", "high=100.0 is out of range: must be <= 10"),
    "fixed-feedback-lr-high": (_valid(fixed={"feedback_lr": 1e6}), "fixed.feedback_lr",
                               "must be <= 10000"),
    "momentum-high-one": (
        _valid(fixed={}, params={"momentum": {"type": "float", "low": 0.5, "high": 1.0}}),
        "params.momentum", "high=1.0 is out of range: must be < 1"),
    "tuned-epochs": (
        _valid(params={"epochs": {"type": "int", "low": 1, "high": 10}}),
        "params.epochs", "study-level"),
    "fixed-seed": (_valid(fixed={"seed": 1}), "fixed.seed", "study-level"),
    "fixed-and-tuned": (_valid(fixed={"lr": 0.1}), "params.lr", "both fixed and tuned"),
    "fixed-out-of-range": (_valid(fixed={"momentum": 1.5}), "fixed.momentum", "must be < 1"),
    "fixed-not-scalar": (_valid(fixed={"momentum": [0.9]}), "fixed.momentum", "JSON scalar"),
    "float-for-int-field": (
        _valid(params={"batch_size": {"type": "float", "low": 16, "high": 64}}),
        "params.batch_size", "takes integers"),
    "unknown-experiment": (_valid(experiment="mnist-cnn"), "experiment", "mnist-fc"),
    "unknown-rule": (_valid(rule="backprob"), "rule", "backprop"),
    "path-like-name": (_valid(name="../etc"), "name", "'../etc' is not a valid name"),
    "upper-case-name": (_valid(name="My-Space"), "name", "lowercase"),
    "name-with-newline": (_valid(name="my-space\n"), "name", "not a valid name"),
    "unknown-distribution-type": (
        _valid(params={"lr": {"type": "normal", "low": 0.1, "high": 1}}),
        "params.lr", 'unknown distribution type "normal"'),
    "missing-distribution-type": (
        _valid(params={"lr": {"low": 0.1, "high": 1}}), "params.lr", '"type"'),
    "extra-key-in-distribution": (
        _valid(params={"lr": {**_LR, "scale": 2}}), "params.lr.scale", "unknown key"),
    "string-bound": (
        _valid(params={"lr": {"type": "float", "low": "0.1", "high": 1}}),
        "params.lr.low", "valid number"),
    "step-with-log": (_valid(params={"lr": {**_LR, "step": 0.01}}), "params.lr", "step"),
    "step-not-dividing": (
        _valid(params={"batch_size": {"type": "int", "low": 16, "high": 64, "step": 10}}),
        "params.batch_size", "multiple of step"),
    "no-params": (_valid(params={}), "params", "at least one parameter"),
    "extra-top-level-key": (_valid(paramz={}), "paramz", "unknown key"),
    "kolen-pollack-without-decay": (_valid(rule="kolen_pollack"), "weight_decay", "kolen_pollack"),
    "kolen-pollack-decay-from-zero": (
        _valid(rule="kolen_pollack",
               params={"weight_decay": {"type": "float", "low": 0.0, "high": 1e-3}}),
        "params.weight_decay", "low=0.0"),
    "error-metric-for-autoencoder": (
        _valid(experiment="mnist-autoencoder", objective={"metric": "test_error"}),
        "objective.metric", "classification"),
}


def _one_line(err: SearchSpaceError) -> str:
    message = str(err)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("data,location,reason", BAD_SPACES.values(), ids=BAD_SPACES.keys())
def test_bad_inline_space_names_parameter(data, location, reason):
    with pytest.raises(SearchSpaceError) as info:
        parse_space(data, "inline-test")
    message = _one_line(info.value)
    assert message.startswith("search space inline-test: ")
    assert location in message and reason in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("data,location,reason", BAD_SPACES.values(), ids=BAD_SPACES.keys())
def test_bad_space_file_names_file_and_parameter(tmp_path, data, location, reason):
    path = tmp_path / "bad-space.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SearchSpaceError) as info:
        load_space(str(path))
    message = _one_line(info.value)
    assert str(path) in message and location in message and reason in message


def test_constructor_raises_validation_error():
    # SearchSpace itself is a pydantic model (usable as an HTTP body); a ValueError either way
    with pytest.raises(ValueError, match="params.noise_std: low=0.0 is out of range"):
        SearchSpace(**_valid(params={"noise_std": {"type": "float", "low": 0, "high": 0.1}}))


@pytest.mark.parametrize("content,reason", [
    ("{\"name\": ", "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ('{"name": NaN}', "NaN is not allowed"),
    ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
    ("[1, 2]", "must be a JSON object"),
])
def test_bad_json_file(tmp_path, content, reason):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(SearchSpaceError) as info:
        load_space(str(path))
    message = _one_line(info.value)
    assert "broken.json" in message and reason in message


def test_missing_file(tmp_path):
    with pytest.raises(SearchSpaceError) as info:
        load_space(str(tmp_path / "nowhere.json"))
    message = _one_line(info.value)
    assert "nowhere.json" in message and "file not found" in message


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(SearchSpaceError) as info:
        load_space("mnist-fc-node-perturbaton")
    message = _one_line(info.value)
    assert "'mnist-fc-node-perturbaton'" in message and "unknown preset" in message
    for name in REQUIRED_PRESETS:
        assert name in message


def test_error_survives_pickling():
    with pytest.raises(SearchSpaceError) as info:
        parse_space(_valid(params={"lr": {"type": "float", "low": 1.0, "high": 0.1}}), "x.json")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert copy.problems == [("params.lr", "low must be < high (got low=1.0, high=0.1)")]


# ---------------------------------------------------------------- trial configs


def test_trial_config_combines_space_and_study_settings():
    space = load_space("mnist-autoencoder-node-perturbation")
    config = space.trial_config(
        {"lr": 1e-3, "noise_std": 0.02, "feedback_lr": 1e-4},
        epochs=3, dataset="mnist-5k", seed=7, device="cpu", data_dir="/data",
        batches_per_epoch=1000)
    assert (config.lr, config.noise_std, config.feedback_lr) == (1e-3, 0.02, 1e-4)
    assert (config.momentum, config.batch_size, config.feedback_solver) == (0.9, 32, "sgd")
    assert (config.epochs, config.seed, config.data_dir, config.batches_per_epoch) == (
        3, 7, "/data", 1000)


def test_trial_config_accepts_numpy_numbers():
    np = pytest.importorskip("numpy")
    space = parse_space(_valid(params={
        "lr": _LR, "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16}}))
    config = space.trial_config({"lr": np.float64(0.01), "batch_size": np.int64(32)})
    assert (config.lr, config.batch_size) == (0.01, 32)


@pytest.mark.parametrize("sampled,settings,location", [
    ({"lr": 1e-3, "noise_std": 0.02}, {}, "params.feedback_lr"),
    ({"lr": 1e-3, "noise_std": 0.02, "feedback_lr": 1e-4, "momentum": 0.5}, {}, "momentum"),
    ({"lr": 5.0, "noise_std": 0.02, "feedback_lr": 1e-4}, {}, "params.lr"),
    ({"lr": 1e-3, "noise_std": 0.02, "feedback_lr": 1e-4}, {"momentum": 0.0}, "momentum"),
    ({"lr": 1e-3, "noise_std": 0.02, "feedback_lr": 1e-4}, {"rule": "backprop"}, "rule"),
    ({"lr": 1e-3, "noise_std": 0.02, "feedback_lr": 1e-4}, {"epochs": 0}, "epochs"),
    ({"lr": 1e-3, "noise_std": 0.02, "feedback_lr": 1e-4}, {"dataset": "cifar10"}, "dataset"),
])
def test_trial_config_errors(sampled, settings, location):
    space = load_space("mnist-autoencoder-node-perturbation")
    with pytest.raises(SearchSpaceError) as info:
        space.trial_config(sampled, **settings)
    message = _one_line(info.value)
    assert message.startswith("search space mnist-autoencoder-node-perturbation: ")
    assert location in message


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(REQUIRED_PRESETS))
def test_json_round_trip(name):
    space = load_space(name)
    again = SearchSpace.model_validate_json(space.to_json())
    assert again == space
    assert parse_space(json.loads(space.to_json())) == space


def test_inline_equals_file(tmp_path):
    data = _valid(params={
        "lr": _LR,
        "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "feedback_solver": {"type": "categorical", "choices": ["sgd", "lstsq"]},
    })
    path = tmp_path / "my-space.json"
    path.write_text(json.dumps(data))
    inline = parse_space(data)
    assert inline == load_space(str(path)) == load_space(path)
    assert inline.to_json() == load_space(str(path)).to_json()


def test_json_schema_is_available():
    schema = SearchSpace.model_json_schema()
    assert {"name", "experiment", "rule", "fixed", "params"} <= set(schema["properties"])


# ---------------------------------------------------------------- sampling


def _asked_params(space: SearchSpace, seed: int, n: int = 5) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions = space.to_optuna()
    return [study.ask(fixed_distributions=distributions).params for _ in range(n)]


def test_sampling_is_reproducible():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("mnist-fc-node-perturbation")
    first, second = _asked_params(space, 3), _asked_params(space, 3)
    assert first == second
    assert first != _asked_params(space, 4)
    for params in first:
        config = space.trial_config(params, epochs=1)
        assert 3e-4 <= config.lr <= 3e-1 and 1e-4 <= config.noise_std <= 1e-1
