"""Optimizers of the forward weights, applied to explicit gradients in place.

The learning rule produces the gradient; the optimizer is a separate choice
(``sgd`` with optional momentum, or ``adam``). They work on plain tensor lists with
``torch._foreach_*`` kernels: one call per update instead of one per parameter.
"""

from __future__ import annotations

import torch

from trainables.members import Scalar, add_scaled_, per_member
from trainables.registry import Registry

Tensor = torch.Tensor
OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")


class Optimizer:
    """Base: ``step(params, grads, scale)`` updates ``params`` with ``scale · grads``.

    For a population (stacked parameters, ``trainables/population.py``) ``lr``,
    ``momentum`` and ``weight_decay`` may be (K,) tensors, one value per member.
    """

    def __init__(self, lr: Scalar, momentum: Scalar = 0.0, weight_decay: Scalar = 0.0):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay

    def step(self, params: list[Tensor], grads: list[Tensor], scale: float = 1.0) -> None:
        raise NotImplementedError

    @property
    def per_member(self) -> bool:
        """Do the members of a population have their own numbers?"""
        return any(isinstance(v, Tensor) for v in (self.lr, self.momentum, self.weight_decay))

    def _decayed(self, params: list[Tensor], grads: list[Tensor], scale: float) -> list[Tensor]:
        """scale·g + wd·w (L2 weight decay), or the scaled grads themselves."""
        if scale != 1.0:
            grads = torch._foreach_mul(grads, scale)
        if isinstance(self.weight_decay, Tensor):
            grads = [g.clone() for g in grads] if scale == 1.0 else grads
            for g, p in zip(grads, params, strict=True):
                add_scaled_(g, p, self.weight_decay)
        elif self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        return grads

    def keep(self, index: Tensor) -> None:
        """Keep only the members at ``index`` of a population."""
        for key in ("lr", "momentum", "weight_decay"):
            if isinstance(value := getattr(self, key), Tensor):
                setattr(self, key, value[index])

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """w ← w − η·v with v = μ·v + g (plain SGD when μ = 0)."""

    def __init__(self, lr: Scalar, momentum: Scalar = 0.0, weight_decay: Scalar = 0.0):
        super().__init__(lr, momentum, weight_decay)
        self.velocity: list[Tensor] | None = None

    def step(self, params: list[Tensor], grads: list[Tensor], scale: float = 1.0) -> None:
        if self.per_member:
            self._member_step(params, grads, scale)
            return
        if not self.momentum and not self.weight_decay:
            torch._foreach_add_(params, grads, alpha=-self.lr * scale)
            return
        grads = self._decayed(params, grads, scale)
        if self.momentum:
            if self.velocity is None:
                self.velocity = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.velocity, self.momentum)
                torch._foreach_add_(self.velocity, grads)
            grads = self.velocity
        torch._foreach_add_(params, grads, alpha=-self.lr)

    def _member_step(self, params: list[Tensor], grads: list[Tensor], scale: float) -> None:
        """The step of a population whose members have their own η, μ, wd: the same
        sums as ``step`` (v = μ·v + g with μ = 0 is g itself)."""
        grads = self._decayed(params, grads, scale)
        if self.velocity is None:
            self.velocity = [g.clone() for g in grads]
        else:
            for v, g in zip(self.velocity, grads, strict=True):
                v.mul_(per_member(self.momentum, v)).add_(g)
        for p, v in zip(params, self.velocity, strict=True):
            add_scaled_(p, v, -self.lr)

    def keep(self, index: Tensor) -> None:
        super().keep(index)
        if self.velocity is not None:
            self.velocity = [v[index] for v in self.velocity]

    def state_dict(self) -> dict:
        return {"velocity": None if self.velocity is None else [v.clone() for v in self.velocity]}

    def load_state_dict(self, state: dict) -> None:
        v = state.get("velocity")
        self.velocity = None if v is None else [t.clone() for t in v]


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``momentum`` is unused."""

    def __init__(
        self,
        lr: Scalar,
        momentum: Scalar = 0.0,
        weight_decay: Scalar = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(lr, momentum, weight_decay)
        self.betas = betas
        self.eps = eps
        self.t = 0
        self.m: list[Tensor] | None = None
        self.v: list[Tensor] | None = None

    def step(self, params: list[Tensor], grads: list[Tensor], scale: float = 1.0) -> None:
        grads = self._decayed(params, grads, scale)
        b1, b2 = self.betas
        if self.m is None:
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        self.t += 1
        torch._foreach_lerp_(self.m, grads, 1.0 - b1)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1.0 - b2)
        step_size = self.lr / (1.0 - b1**self.t)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, (1.0 - b2**self.t) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        if isinstance(step_size, Tensor):  # a population: one η per member
            for p, m, d in zip(params, self.m, denom, strict=True):
                add_scaled_(p, m / d, -step_size)
        else:
            torch._foreach_addcdiv_(params, self.m, denom, value=-step_size)

    def keep(self, index: Tensor) -> None:
        super().keep(index)
        if self.m is not None:
            self.m = [m[index] for m in self.m]
            self.v = [v[index] for v in self.v]

    def state_dict(self) -> dict:
        return {"t": self.t, "m": _clone(self.m), "v": _clone(self.v)}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        self.m = _clone(state["m"])
        self.v = _clone(state["v"])


def _clone(xs: list[Tensor] | None) -> list[Tensor] | None:
    return None if xs is None else [x.clone() for x in xs]


def make_optimizer(name: str, lr: Scalar, momentum: Scalar = 0.0, weight_decay: Scalar = 0.0):
    return OPTIMIZERS.get(name)(lr=lr, momentum=momentum, weight_decay=weight_decay)
