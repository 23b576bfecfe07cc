"""With feedback equal to the forward weights, every rule's update is the true gradient."""

from __future__ import annotations

import pytest
import torch

from tests.trainables.helpers import (
    autograd_grads,
    make_net,
    mlp_layers,
    rel_diff,
    rule_settings,
    small_cnn_layers,
)
from trainables.experiments import EXPERIMENTS
from trainables.rules import RULES, make_rule

LAYERWISE = [n for n in RULES.names() if not RULES.get(n).direct]
DIRECT = [n for n in RULES.names() if RULES.get(n).direct]
SETTINGS = rule_settings(weight_decay=0.1)  # kolen_pollack needs a decay


def _case(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        net = make_net(EXPERIMENTS.get("mnist-fc").layers, "mse", (784,))
        x = torch.rand(9, 784, generator=g, dtype=torch.float64)
        t = torch.nn.functional.one_hot(torch.arange(9) % 10, 10).double()
    elif kind == "autoencoder":
        net = make_net(EXPERIMENTS.get("mnist-autoencoder").layers, "mse", (784,))
        x = torch.rand(9, 784, generator=g, dtype=torch.float64)
        t = x
    elif kind == "cnn":
        net = make_net(small_cnn_layers(), "cross_entropy", (3, 16, 16))
        x = torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)
        t = torch.arange(5) % 10
    else:  # the paper's CIFAR-10 network itself, two images
        net = make_net(EXPERIMENTS.get("cifar10-cnn").layers, "cross_entropy", (3, 32, 32))
        x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
        t = torch.tensor([3, 7])
    return net, x, t


def _rule_update(net, rule, x, t):
    fp = net.forward(x)
    errors, _ = rule.send_errors(fp, net.output_error(fp, t))
    return [g / x.shape[0] for g in net.weight_gradients(fp, errors)]


@pytest.mark.parametrize("kind", ["mlp", "autoencoder", "cnn", "cifar10-cnn"])
@pytest.mark.parametrize("name", LAYERWISE)
def test_layerwise_rule_with_b_equal_w_is_the_gradient(name, kind):
    net, x, t = _case(kind)
    rule = make_rule(name, net, SETTINGS, torch.Generator().manual_seed(2))
    for j in range(1, len(net.layers)):
        if rule.feedback[j] is not None:
            rule.feedback[j].copy_(net.weights[j])
    expected = autograd_grads(net, x, t)
    for got, want in zip(_rule_update(net, rule, x, t), expected, strict=True):
        assert rel_diff(got, want) <= 1e-5


@pytest.mark.parametrize("name", LAYERWISE[1:])
def test_random_feedback_is_not_the_gradient(name):
    """The check above can fail: random feedback gives a different update below the top."""
    net, x, t = _case("mlp")
    rule = make_rule(name, net, SETTINGS, torch.Generator().manual_seed(2))
    got = _rule_update(net, rule, x, t)
    expected = autograd_grads(net, x, t)
    assert rel_diff(got[-2], expected[-2]) <= 1e-5  # the output layer needs no feedback
    assert rel_diff(got[0], expected[0]) > 0.1


@pytest.mark.parametrize("name", DIRECT)
def test_direct_rule_with_b_equal_weight_product_is_the_gradient(name):
    """In a deep linear network the direct pathway with B[j] = W[L-1]⋯W[j] is exact."""
    net = make_net(mlp_layers([7, 6, 5, 4, 3], activation="identity"), "mse", (7,))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 7, generator=g, dtype=torch.float64)
    t = torch.randn(11, 3, generator=g, dtype=torch.float64)
    rule = make_rule(name, net, SETTINGS, g)
    for j in range(1, len(net.layers)):
        product = net.weights[-1]
        for k in range(len(net.layers) - 2, j - 1, -1):
            product = product @ net.weights[k]
        rule.feedback[j].copy_(product)
    for got, want in zip(_rule_update(net, rule, x, t), autograd_grads(net, x, t), strict=True):
        assert rel_diff(got, want) <= 1e-5


@pytest.mark.parametrize("name", DIRECT)
def test_direct_rule_on_cnn_top_layer_is_exact(name):
    net, x, t = _case("cnn")
    rule = make_rule(name, net, SETTINGS, torch.Generator().manual_seed(2))
    got = _rule_update(net, rule, x, t)
    want = autograd_grads(net, x, t)
    assert rel_diff(got[-2], want[-2]) <= 1e-5 and rel_diff(got[-1], want[-1]) <= 1e-5
    assert rel_diff(got[0], want[0]) > 0.1  # random direct feedback below the top
