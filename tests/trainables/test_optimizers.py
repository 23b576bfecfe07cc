"""Our foreach optimizers against torch.optim on the same gradients."""

from __future__ import annotations

import pytest
import torch

from trainables.errors import ConfigError
from trainables.optimizers import make_optimizer


@pytest.mark.parametrize(
    "name,kw,reference",
    [
        ("sgd", {}, lambda p, lr: torch.optim.SGD(p, lr=lr)),
        ("sgd", {"momentum": 0.9}, lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
        ("sgd", {"weight_decay": 0.01},
         lambda p, lr: torch.optim.SGD(p, lr=lr, weight_decay=0.01)),
        ("adam", {}, lambda p, lr: torch.optim.Adam(p, lr=lr)),
    ],
)
def test_matches_torch_optim(name, kw, reference):
    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    theirs = [p.clone().requires_grad_() for p in ours]
    opt = make_optimizer(name, lr=0.05, **kw)
    ref = reference(theirs, 0.05)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        opt.step(ours, [2.0 * gr for gr in grads], scale=0.5)
        for p, gr in zip(theirs, grads, strict=True):
            p.grad = gr.clone()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_unknown_optimizer():
    with pytest.raises(ConfigError, match="adam, sgd"):
        make_optimizer("rmsprop", lr=0.1)
