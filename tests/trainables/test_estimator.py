"""The node-perturbation estimate λ̂ = (L̃ − L)·ξ/c of ∂L/∂h (paper eq. 3)."""

from __future__ import annotations

import pytest
import torch

from tests.trainables.helpers import make_net, mlp_layers, rule_settings
from trainables.rules import Step, make_rule

DRAWS = 40_000


def _mean_estimate(net, x, t, c):
    """Average λ̂ over DRAWS noise draws per sample, through the trainer's own code path."""
    n = x.shape[0]
    g = torch.Generator().manual_seed(7)  # common random numbers across noise levels
    rule = make_rule("node_perturbation", net, rule_settings(noise_std=c), g)
    xs, ts = x.repeat(DRAWS, 1), t.repeat(DRAWS, 1)
    fp = net.forward_noisy(xs, c, g)
    step = Step(fp, None, [], [], net.per_sample_loss(fp.output, ts),
                net.per_sample_loss(fp.noisy_output, ts))
    return [None] + [lam.view(DRAWS, n, -1).mean(0) for lam in rule.targets(step)[1:]]


@pytest.fixture(scope="module")
def case():
    net = make_net(mlp_layers([10, 8, 6, 4], activation="sigmoid"), "mse", (10,))
    net.weights[1].mul_(3.0)
    net.weights[2].mul_(3.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 10, generator=g, dtype=torch.float64)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    # autograd's ∂L/∂h: gradients of zero perturbations δ added to each hidden layer
    params = net.parameters()
    deltas = [torch.zeros(3, spec.out_size, dtype=torch.float64, requires_grad=True)
              for spec in net.layers[:-1]]
    h = x
    for i, spec in enumerate(net.layers):
        h = h @ params[2 * i].t() + params[2 * i + 1]
        if spec.activation == "sigmoid":
            h = torch.sigmoid(h)
        if i < len(deltas):
            h = h + deltas[i]
    loss = (0.5 * ((h - t) ** 2).sum(1)).sum()
    true = torch.autograd.grad(loss, deltas)
    return net, x, t, true


def _errors(estimate, true):
    return [((estimate[j + 1] - true[j]).norm() / true[j].norm()).item() for j in range(len(true))]


def test_estimate_matches_autograd(case):
    net, x, t, true = case
    errors = _errors(_mean_estimate(net, x, t, 1e-3), true)
    assert max(errors) < 0.1, errors


def test_error_shrinks_with_the_noise(case):
    net, x, t, true = case
    errors = {c: max(_errors(_mean_estimate(net, x, t, c), true)) for c in (1.0, 0.3, 0.03)}
    assert errors[1.0] > errors[0.3] > errors[0.03], errors
    assert errors[1.0] > 0.2  # the bias at large noise is real, not sampling noise


def test_estimate_scales_as_one_over_c_not_c_squared(case):
    """Dividing the noise c·ξ by c only (not c²) is the classic bug; λ̂ must not depend on c."""
    net, x, t, true = case
    small = _mean_estimate(net, x, t, 1e-3)[1]
    smaller = _mean_estimate(net, x, t, 1e-4)[1]
    ratio = (smaller.norm() / small.norm()).item()
    assert 0.9 < ratio < 1.1
