"""The learning-rule concept: how errors go down, and how feedback learns."""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from trainables.catalog import check_rule_settings
from trainables.errors import ConfigError
from trainables.network import FeedbackNetwork, ForwardPass, init_weight

Tensor = torch.Tensor


@dataclass(frozen=True)
class RuleSettings:
    """The part of a trial's configuration that learning rules read: these fields of a
    ``TrainConfig``, which declares them (types, defaults, ranges)."""

    noise_std: float
    feedback_lr: float
    feedback_solver: str
    lr: float
    weight_decay: float
    loss_reduction: str  # "sum": feedback steps on batch sums, as the W steps

    @classmethod
    def from_config(cls, config: Any) -> RuleSettings:
        """The rule's fields of a ``TrainConfig`` (any object with those attributes)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


@dataclass
class Step:
    """One mini-batch, as the rule sees it after the errors were sent down."""

    fp: ForwardPass
    e_out: Tensor  # e[L-1] per sample
    errors: list[Tensor]  # ẽ[i] per layer, per sample
    signals: list[Tensor | None]  # λ̃[j-1] = feedback[j]ᵀ ẽ[j] (or direct), per sample
    loss: Tensor  # clean per-sample loss
    noisy_loss: Tensor | None = None


class LearningRule(ABC):
    """Base of all learning rules.

    A rule owns the feedback matrices ``feedback[j]`` (j ≥ 1; ``feedback[0]`` is
    None) that carry errors from layer j down to h[j-1], or, for ``direct`` rules,
    from the output error straight to h[j-1]. Forward weights always learn from
    the errors these produce (trainables/README.md §1); subclasses decide how feedback learns.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    direct: ClassVar[bool] = False
    uses_noise: ClassVar[bool] = False  # needs the noisy forward pass
    tracks_weight_updates: ClassVar[bool] = False  # wants ΔW after each optimizer step

    def __init__(self, net: FeedbackNetwork, settings: RuleSettings, generator: torch.Generator):
        self.check_settings(settings)
        self.net = net
        self.settings = settings
        self.feedback: list[Tensor | None] = self.init_feedback(generator)

    @classmethod
    def check_settings(cls, settings: RuleSettings) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) if the rule cannot run with ``settings``
        (``catalog.check_rule_settings``, which ``TrainConfig`` calls too, torch-free)."""
        check_rule_settings(cls.name, settings.weight_decay)

    # ------------------------------------------------------------ feedback
    def init_feedback(self, generator: torch.Generator) -> list[Tensor | None]:
        """Random feedback, drawn like the forward weights (the network's ``init``),
        with fan-in the layer's (layer-wise) or the number of outputs (direct)."""
        feedback: list[Tensor | None] = [None]
        for j in range(1, len(self.net.layers)):
            fan = self.net.output_size if self.direct else self.net.layers[j].fan_in
            b = init_weight(self.feedback_shape(j), fan, self.net.init, generator)
            feedback.append(b.to(self.net.weights[0].dtype).to(self.net.device))
        return feedback

    def feedback_shape(self, j: int) -> tuple[int, ...]:
        if self.direct:
            return (self.net.output_size, math.prod(self.net.hidden_shapes[j - 1]))
        return self.net.layers[j].weight_shape

    def pathway(self) -> list[Tensor | None]:
        """The matrices that carry errors down in this rule."""
        return self.feedback

    def send_errors(self, fp: ForwardPass, e_out: Tensor) -> tuple[list[Tensor], list]:
        return self.net.backward(fp, e_out, self.pathway(), direct=self.direct)

    # ------------------------------------------------------------- learning
    def update_feedback(self, step: Step) -> None:
        """Learn the feedback from one mini-batch (default: fixed feedback)."""

    def after_weight_update(self, deltas: list[Tensor], old_weights: list[Tensor]) -> None:
        """Called with ΔW per layer when ``tracks_weight_updates`` is set."""

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"feedback": [None if b is None else b.clone() for b in self.feedback]}

    def load_state_dict(self, state: dict) -> None:
        for dst, src in zip(self.feedback, state["feedback"], strict=True):
            if dst is not None:
                dst.copy_(src)

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(b).all()) for b in self.feedback if b is not None)


class FeedbackSolver(ABC):
    """Regresses a target signal λ on an error e: min_B ‖Bᵀe − λ‖² (trainables/README.md §2)."""

    name: ClassVar[str]

    def update(self, j: int, B: Tensor, e: Tensor, target: Tensor, prediction: Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SGDSolver(FeedbackSolver):
    """B ← B − η_B · mean over the batch of e (Bᵀe − λ)ᵀ (the workshop text)."""

    name = "sgd"

    def __init__(self, net: FeedbackNetwork, feedback_lr: float, direct: bool,
                 loss_reduction: str = "mean"):
        self.net = net
        self.feedback_lr = feedback_lr
        self.direct = direct
        self.batch_mean = loss_reduction == "mean"

    def update(self, j: int, B: Tensor, e: Tensor, target: Tensor, prediction: Tensor) -> None:
        residual = prediction - target.reshape(prediction.shape)
        grad = self.net.feedback_gradient(j, e, residual, None, self.direct)
        scale = e.shape[0] if self.batch_mean else 1
        B.add_(grad, alpha=-self.feedback_lr / scale)


class LeastSquaresSolver(FeedbackSolver):
    """Running ridge least squares (the authors' final MNIST code).

    V ← V + Σ e eᵀ (from V = γI), C ← C + Σ e λᵀ, B = V⁻¹ C — i.e. Bᵀ = S V⁻¹ with S = Cᵀ.
    """

    name = "lstsq"

    def __init__(self, net: FeedbackNetwork, direct: bool, ridge: float = 0.1):
        if not direct and any(spec.kind != "linear" for spec in net.layers[1:]):
            raise ConfigError(
                "feedback_solver='lstsq' needs linear layers for layer-wise feedback; "
                "use feedback_solver='sgd' or a direct rule"
            )
        self.ridge = ridge
        self.V: dict[int, Tensor] = {}
        self.C: dict[int, Tensor] = {}

    def update(self, j: int, B: Tensor, e: Tensor, target: Tensor, prediction: Tensor) -> None:
        if j not in self.V:
            self.V[j] = self.ridge * torch.eye(e.shape[1], device=e.device, dtype=e.dtype)
            self.C[j] = torch.zeros_like(B)
        self.V[j].addmm_(e.t(), e)
        self.C[j].addmm_(e.t(), target.reshape(e.shape[0], -1))
        B.copy_(torch.linalg.solve(self.V[j], self.C[j]))

    def state_dict(self) -> dict:
        return {"V": {j: v.clone() for j, v in self.V.items()},
                "C": {j: c.clone() for j, c in self.C.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.V = {int(j): v.clone() for j, v in state["V"].items()}
        self.C = {int(j): c.clone() for j, c in state["C"].items()}


FEEDBACK_SOLVERS = ("sgd", "lstsq")


def make_solver(net: FeedbackNetwork, settings: RuleSettings, direct: bool) -> FeedbackSolver:
    if settings.feedback_solver == "sgd":
        return SGDSolver(net, settings.feedback_lr, direct, settings.loss_reduction)
    if settings.feedback_solver == "lstsq":
        return LeastSquaresSolver(net, direct)
    valid = ", ".join(FEEDBACK_SOLVERS)
    raise ConfigError(f"unknown feedback_solver {settings.feedback_solver!r}; valid: {valid}")


class RegressedFeedback(LearningRule):
    """Shared machinery of rules whose feedback regresses a target signal."""

    def __init__(self, net: FeedbackNetwork, settings: RuleSettings, generator: torch.Generator):
        super().__init__(net, settings, generator)
        self.solver = make_solver(net, settings, self.direct)

    def targets(self, step: Step) -> list[Tensor | None]:
        """The signal each feedback[j] should reproduce (index j, like ``signals``)."""
        raise NotImplementedError

    def update_feedback(self, step: Step) -> None:
        targets = self.targets(step)
        for j in range(1, len(self.feedback)):
            e = step.e_out if self.direct else step.errors[j]
            self.solver.update(j, self.feedback[j], e, targets[j], step.signals[j])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "solver": self.solver.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.solver.load_state_dict(state["solver"])
