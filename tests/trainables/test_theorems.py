"""The supplement's theorems, checked numerically with the forward weights frozen.

Theorem 2: in a deep linear network the least-squares feedback learnt from the
node-perturbation estimate converges to W, layer by layer (c → 0, T → ∞).
Corollary 1: the direct variant converges to the product of the weights above.
Theorem 1: the top layer's feedback converges to W even in a nonlinear network.
"""

from __future__ import annotations

import pytest
import torch

from tests.trainables.helpers import make_net, mlp_layers, rule_settings
from trainables.rules import Step, make_rule


def _linear_net(seed=0):
    """8-5-5-5 identity network, orthogonal upper weights (well-conditioned errors, A3)."""
    net = make_net(mlp_layers([8, 5, 5, 5], activation="identity"), "mse", (8,),
                   seed=seed, dtype=torch.float32)
    for j in range(1, len(net.layers)):
        gen = torch.Generator().manual_seed(100 + j)
        q, _ = torch.linalg.qr(torch.randn(net.weights[j].shape, generator=gen))
        net.weights[j].copy_(q)
    return net


def _learn_feedback(net, rule, steps, noise_std, schedule=None, batch=256, seed=1):
    """Feed teacher data through the frozen network; only the rule's feedback learns."""
    g = torch.Generator().manual_seed(seed)
    n_in, n_out = net.layers[0].in_size, net.output_size
    teacher = torch.randn(n_out, n_in, generator=g)
    for s in range(steps):
        if schedule is not None:
            rule.solver.feedback_lr = schedule(s)
        x = torch.randn(batch, n_in, generator=g)
        t = x @ teacher.t() + 0.5 * torch.randn(batch, n_out, generator=g)
        fp = net.forward_noisy(x, noise_std, g)
        loss = net.per_sample_loss(fp.output, t)
        noisy = net.per_sample_loss(fp.noisy_output, t)
        e_out = net.output_error(fp, t)
        errors, signals = rule.send_errors(fp, e_out)
        rule.update_feedback(Step(fp, e_out, errors, signals, loss, noisy))


def _relative_errors(net, rule, direct=False):
    errs = []
    for j in range(1, len(net.layers)):
        target = net.weights[j]
        if direct:  # W[L-1] ⋯ W[j]
            target = net.weights[-1]
            for k in range(len(net.layers) - 2, j - 1, -1):
                target = target @ net.weights[k]
        errs.append(((rule.feedback[j] - target).norm() / target.norm()).item())
    return errs


def _sgd_schedule(step):
    """Decreasing steps, as stochastic approximation needs to beat its noise floor."""
    return 0.01 if step < 1000 else 0.003 if step < 3000 else 0.001


def _rule(name, net, solver):
    settings = rule_settings(noise_std=1e-3, feedback_solver=solver)
    return make_rule(name, net, settings, torch.Generator().manual_seed(5))


@pytest.mark.parametrize("solver", ["lstsq", "sgd"])
def test_layerwise_feedback_converges_to_w_in_deep_linear_network(solver):
    net = _linear_net()
    rule = _rule("node_perturbation", net, solver)
    before = _relative_errors(net, rule)
    assert min(before) > 0.5  # random start, far from W
    schedule = _sgd_schedule if solver == "sgd" else None
    _learn_feedback(net, rule, steps=3000 if solver == "lstsq" else 6000, noise_std=1e-3,
                    schedule=schedule)
    after = _relative_errors(net, rule)
    assert max(after) < 0.05, after


@pytest.mark.parametrize("solver", ["lstsq", "sgd"])
def test_direct_feedback_converges_to_weight_product(solver):
    net = _linear_net()
    rule = _rule("node_perturbation_direct", net, solver)
    schedule = _sgd_schedule if solver == "sgd" else None
    _learn_feedback(net, rule, steps=3000 if solver == "lstsq" else 6000, noise_std=1e-3,
                    schedule=schedule)
    after = _relative_errors(net, rule, direct=True)
    assert max(after) < 0.05, after
    # ...and not to the layer-wise W, which has another shape or another value
    assert ((rule.feedback[1] - net.weights[1]).norm() / net.weights[1].norm()).item() > 0.2


def test_top_layer_feedback_converges_in_nonlinear_network():
    """Theorem 1: e[L-1] is the true error, so B[L-1] → W[L-1] for any hidden σ."""
    net = make_net(mlp_layers([8, 6, 5, 5], activation="sigmoid"), "mse", (8,),
                   dtype=torch.float32)
    net.weights[2].mul_(3.0)  # a top layer well away from zero
    rule = make_rule("node_perturbation", net,
                     rule_settings(noise_std=1e-3, feedback_solver="lstsq"),
                     torch.Generator().manual_seed(5))
    _learn_feedback(net, rule, steps=3000, noise_std=1e-3)
    assert _relative_errors(net, rule)[-1] < 0.05


def test_bias_grows_with_noise_in_nonlinear_network():
    """The bias is O(c): with large noise the top-layer estimate is visibly off."""
    results = {}
    for c in (1e-3, 1.0):
        net = make_net(mlp_layers([8, 6, 5, 5], activation="tanh"), "mse", (8,),
                       dtype=torch.float32)
        net.weights[1].mul_(4.0)
        rule = make_rule("node_perturbation", net,
                         rule_settings(noise_std=c, feedback_solver="lstsq"),
                         torch.Generator().manual_seed(5))
        _learn_feedback(net, rule, steps=3000, noise_std=c)
        results[c] = _relative_errors(net, rule)[0]
    assert results[1.0] > 2 * results[1e-3], results
