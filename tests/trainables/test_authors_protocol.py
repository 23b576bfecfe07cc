"""The knobs of the authors' protocol: width, output activation, initialisation, loss
reduction over the batch, and the per-step test loss on random test images."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from tests.trainables.helpers import autograd_grads, rel_diff, rule_settings
from trainables.config import TrainConfig
from trainables.data import Dataset
from trainables.experiments import EXPERIMENTS
from trainables.network import FeedbackNetwork
from trainables.rules import RULES, make_rule
from trainables.trainer import Trainer

AE = EXPERIMENTS.get("mnist-autoencoder")


def _tiny_mnist(n_train=256, n_test=200, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        name="tiny", description="random pixels", x_train=torch.rand(n_train, 784, generator=g),
        y_train=torch.randint(10, (n_train,), generator=g),
        x_test=torch.rand(n_test, 784, generator=g),
        y_test=torch.randint(10, (n_test,), generator=g), num_classes=10, input_shape=(784,),
    )


def test_hidden_width_and_output_activation_reshape_the_autoencoder():
    layers = AE.build_layers(50, "relu")
    assert [(s.in_size, s.out_size) for s in layers] == [(784, 50), (50, 2), (2, 50), (50, 784)]
    assert [s.activation for s in layers] == ["tanh", "identity", "tanh", "relu"]
    assert AE.build_layers() == AE.layers
    with pytest.raises(ValueError, match="no adjustable hidden width"):
        EXPERIMENTS.get("mnist-fc").build_layers(30)


def test_bad_knob_values_name_their_field():
    for bad, field in (({"experiment": "mnist-fc", "hidden_width": 30}, "hidden_width"),
                       ({"experiment": "mnist-autoencoder", "hidden_width": 0}, "hidden_width"),
                       ({"output_activation": "sigmoid"}, "output_activation"),
                       ({"experiment": "cifar10-cnn", "output_activation": "relu"},
                        "output_activation"),
                       ({"init": "xavier"}, "init"),
                       ({"loss_reduction": "max"}, "loss_reduction"),
                       ({"step_test_images": -1}, "step_test_images")):
        with pytest.raises(ValidationError, match=field):
            TrainConfig(**bad)


def test_authors_init_is_truncated_he_normal_with_bias_point_one():
    g = torch.Generator().manual_seed(0)
    net = FeedbackNetwork(AE.build_layers(200), "mse", (784,), g, init="authors")
    w = net.weights[0]  # 200 × 784
    sigma = math.sqrt(2 / 784)
    assert w.abs().max() <= 2 * sigma + 1e-7
    # a normal truncated at ±2σ has std 0.8796σ
    assert abs(w.std().item() / sigma - 0.8796) < 0.01
    assert all(torch.all(b == 0.1) for b in net.biases)
    rule = make_rule("feedback_alignment", net, rule_settings(), g)
    B = rule.feedback[3]  # 784 × 200, fan-in 200
    assert abs(B.std().item() / math.sqrt(2 / 200) - 0.8796) < 0.02
    uniform = FeedbackNetwork(AE.layers, "mse", (784,), torch.Generator().manual_seed(0))
    assert uniform.weights[0].abs().max() <= 1 / math.sqrt(784)


@pytest.mark.parametrize("name", [n for n in RULES.names() if not RULES.get(n).direct])
def test_relu_output_50_wide_rule_with_b_equal_w_is_the_gradient(name):
    torch.set_default_dtype(torch.float64)
    try:
        net = FeedbackNetwork(AE.build_layers(50, "relu"), "mse", (784,),
                              torch.Generator().manual_seed(1), init="authors")
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.rand(9, 784, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rule = make_rule(name, net, rule_settings(weight_decay=0.1), torch.Generator().manual_seed(3))
    for j in range(1, len(net.layers)):
        if rule.feedback[j] is not None:
            rule.feedback[j].copy_(net.weights[j])
    fp = net.forward(x)
    assert (fp.output >= 0).all() and (fp.output == 0).any()  # the ReLU really clips
    errors, _ = rule.send_errors(fp, net.output_error(fp, x))
    got = [g / 9 for g in net.weight_gradients(fp, errors)]
    for a, b in zip(got, autograd_grads(net, x, x), strict=True):
        assert rel_diff(a, b) <= 1e-6


@pytest.mark.parametrize("rule", ["backprop", "node_perturbation"])
def test_sum_reduction_with_rates_divided_by_the_batch_equals_mean_reduction(rule):
    data = _tiny_mnist()
    common = dict(experiment="mnist-autoencoder", rule=rule, epochs=2, batches_per_epoch=4,
                  batch_size=32, hidden_width=50, noise_std=0.02)
    mean = Trainer(TrainConfig(**common, lr=0.002, feedback_lr=0.001), dataset=data)
    total = Trainer(TrainConfig(**common, lr=0.002 / 32, feedback_lr=0.001 / 32,
                                loss_reduction="sum"), dataset=data)
    mean.fit()
    total.fit()
    for a, b in zip(mean.net.parameters(), total.net.parameters(), strict=True):
        assert rel_diff(b, a) < 1e-5
    for a, b in zip(mean.rule.feedback[1:], total.rule.feedback[1:], strict=True):
        if a is not None:  # backprop has no feedback of its own
            assert rel_diff(b, a) < 1e-5
    # and the rates do mean something different: the same η under "sum" moves 32× further
    far = Trainer(TrainConfig(**common, lr=0.002, feedback_lr=0.001 / 32, loss_reduction="sum"),
                  dataset=data)
    far.fit()
    assert rel_diff(far.net.weights[0], mean.net.weights[0]) > 1e-3


def test_step_test_loss_is_the_epoch_mean_of_summed_losses_on_random_test_images():
    data = _tiny_mnist()
    cfg = TrainConfig(experiment="mnist-autoencoder", rule="backprop", lr=0.0, epochs=2,
                      batches_per_epoch=5, step_test_images=32, seed=4)
    trainer = Trainer(cfg, dataset=data)
    result = trainer.fit()
    # W is frozen (lr 0): replay the sampler of test images by hand
    g = torch.Generator().manual_seed(cfg.seed + 3)
    per_step = []
    for _ in range(10):
        idx = torch.randint(len(data.x_test), (32,), generator=g)
        out = trainer.net.predict(data.x_test[idx])
        per_step.append(0.5 * ((out - data.x_test[idx]) ** 2).sum().item())
    epochs = [sum(per_step[:5]) / 5, sum(per_step[5:]) / 5]
    got = [h["step_test_loss"] for h in result.history]
    assert got == pytest.approx(epochs, rel=1e-5)
    assert result.final["best_step_test_loss"] == pytest.approx(min(epochs), rel=1e-5)
    # about 32 × the full test set's per-image loss, but not equal (random images)
    assert got[0] == pytest.approx(32 * result.history[0]["test_loss"], rel=0.2)
    assert "step_test_loss" not in Trainer(cfg.model_copy(update={"step_test_images": 0}),
                                           dataset=data).fit().history[0]


def test_step_test_sampler_survives_a_checkpoint(tmp_path):
    data = _tiny_mnist()
    cfg = TrainConfig(experiment="mnist-autoencoder", rule="node_perturbation", epochs=3,
                      batches_per_epoch=4, step_test_images=32, init="authors",
                      loss_reduction="sum", lr=1e-4, feedback_lr=1e-5, hidden_width=50,
                      output_activation="relu")
    whole = Trainer(cfg, dataset=data).fit()
    first = Trainer(cfg.model_copy(update={"epochs": 1}), dataset=data)
    first.fit()
    first.save_checkpoint(tmp_path / "c.pt")
    rest = Trainer(cfg, dataset=data)
    rest.load_checkpoint(tmp_path / "c.pt")
    resumed = rest.fit()
    assert [h["step_test_loss"] for h in resumed.history] == \
        [h["step_test_loss"] for h in whole.history]
