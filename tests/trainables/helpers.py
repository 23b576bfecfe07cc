"""Shared builders for the trainables tests: small networks with known structure, rule
settings from a config."""

from __future__ import annotations

import torch

from trainables.config import TrainConfig
from trainables.network import FeedbackNetwork, LayerSpec
from trainables.rules import RuleSettings


def mlp_layers(sizes, activation="sigmoid", out_activation="identity"):
    n = len(sizes) - 1
    return [
        LayerSpec(f"fc{i + 1}", "linear", sizes[i], sizes[i + 1],
                  out_activation if i == n - 1 else activation)
        for i in range(n)
    ]


def small_cnn_layers():
    """A CNN with every feature of the paper's: 'same' convs, overlapping max-pools, flatten."""
    pool = (3, 2, 1)
    return [
        LayerSpec("conv1", "conv", 3, 4, "relu", kernel_size=3, pool=pool),
        LayerSpec("conv2", "conv", 4, 6, "relu", kernel_size=5, pool=pool, flatten=True),
        LayerSpec("fc1", "linear", 6 * 4 * 4, 12, "relu"),
        LayerSpec("fc2", "linear", 12, 10, "identity"),
    ]


def make_net(layers, loss, input_shape, seed=0, dtype=torch.float64):
    torch.set_default_dtype(dtype)
    try:
        return FeedbackNetwork(layers, loss, input_shape, torch.Generator().manual_seed(seed))
    finally:
        torch.set_default_dtype(torch.float32)


def autograd_loss(net: FeedbackNetwork, params, x, target):
    """The network's batch-mean loss written with torch.nn.functional, for autograd."""
    F = torch.nn.functional
    acts = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
            "identity": lambda v: v}
    h = x
    for i, spec in enumerate(net.layers):
        W, b = params[2 * i], params[2 * i + 1]
        if spec.kind == "linear":
            a = h @ W.t() + b
        else:
            a = F.conv2d(h, W, b, padding=spec.kernel_size // 2)
        h = acts[spec.activation](a)
        if spec.pool is not None:
            h = F.max_pool2d(h, *spec.pool)
        if spec.flatten:
            h = h.flatten(1)
    if net.loss == "mse":
        return 0.5 * ((h - target) ** 2).sum(1).mean()
    return F.cross_entropy(h, target)


def autograd_grads(net, x, target):
    params = [p.clone().requires_grad_() for p in net.parameters()]
    return torch.autograd.grad(autograd_loss(net, params, x, target), params)


def rel_diff(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def rule_settings(**fields) -> RuleSettings:
    """A rule's settings as a trial gets them: from a ``TrainConfig`` of these fields."""
    return RuleSettings.from_config(TrainConfig(**fields))
