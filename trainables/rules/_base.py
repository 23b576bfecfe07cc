"""The learning-rule concept: how errors go down, and how feedback learns."""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch

from trainables.catalog import check_rule_settings
from trainables.errors import ConfigError
from trainables.members import Scalar, add_scaled_
from trainables.network import FeedbackNetwork, ForwardPass, finite_rows, init_weight

Tensor = torch.Tensor


@dataclass(frozen=True)
class RuleSettings:
    """The part of a trial's configuration that learning rules read: these fields of a
    ``TrainConfig``, which declares them (types, defaults, ranges)."""

    noise_std: Scalar  # in a population, the numbers are (K,) tensors, one per member
    feedback_lr: Scalar
    feedback_solver: str
    lr: Scalar
    weight_decay: Scalar
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
    def stack(cls, rules: list[LearningRule], net: FeedbackNetwork,
              settings: RuleSettings) -> LearningRule:
        """The population of ``rules`` (one per member, each checked alone) on the stacked
        ``net``, with ``settings`` whose numbers are (K,) tensors."""
        first = rules[0]
        pop = cls.__new__(cls)
        pop.__dict__.update(first.__dict__)
        pop.net, pop.settings = net, settings
        pop.feedback = [None if b is None else torch.stack([r.feedback[j] for r in rules])
                        for j, b in enumerate(first.feedback)]
        pop.stack_state(rules)
        return pop

    def stack_state(self, rules: list[LearningRule]) -> None:
        """Stack what else the rule keeps per member (a solver's state)."""

    def keep(self, index: Tensor) -> None:
        """Keep only the members at ``index``."""
        self.feedback = [None if b is None else b[index] for b in self.feedback]
        self.settings = replace(self.settings, **{
            f.name: v[index] for f in fields(self.settings)
            if isinstance(v := getattr(self.settings, f.name), Tensor)})

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

    def finite_members(self) -> Tensor:
        """Per member of a population: is all its feedback finite? (K,) bool."""
        feedback = [b for b in self.feedback if b is not None]
        if not feedback:
            return torch.ones(self.net.members, dtype=torch.bool,
                              device=self.net.weights[0].device)
        return finite_rows(feedback)


class FeedbackSolver(ABC):
    """Regresses a target signal λ on an error e: min_B ‖Bᵀe − λ‖² (trainables/README.md §2)."""

    name: ClassVar[str]

    def update(self, j: int, B: Tensor, e: Tensor, target: Tensor, prediction: Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def stack(self, solvers: list[FeedbackSolver]) -> None:
        """Take the stacked state of ``solvers`` (one per member of a population)."""

    def keep(self, index: Tensor) -> None:
        """Keep only the members at ``index``."""


class SGDSolver(FeedbackSolver):
    """B ← B − η_B · mean over the batch of e (Bᵀe − λ)ᵀ (the workshop text)."""

    name = "sgd"

    def __init__(self, net: FeedbackNetwork, feedback_lr: Scalar, direct: bool,
                 loss_reduction: str = "mean"):
        self.net = net
        self.feedback_lr = feedback_lr
        self.direct = direct
        self.batch_mean = loss_reduction == "mean"

    def update(self, j: int, B: Tensor, e: Tensor, target: Tensor, prediction: Tensor) -> None:
        residual = prediction - target.reshape(prediction.shape)
        grad = self.net.feedback_gradient(j, e, residual, None, self.direct)
        # the batch's size: dim 0 of a network's errors, dim 1 of a population's
        scale = e.shape[0 if self.net.members is None else 1] if self.batch_mean else 1
        add_scaled_(B, grad, -self.feedback_lr / scale)

    def keep(self, index: Tensor) -> None:
        if isinstance(self.feedback_lr, Tensor):
            self.feedback_lr = self.feedback_lr[index]


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
            eye = self.ridge * torch.eye(e.shape[-1], device=e.device, dtype=e.dtype)
            self.V[j] = eye.expand(*B.shape[:-2], -1, -1).clone()
            self.C[j] = torch.zeros_like(B)
        target = target.reshape(*e.shape[:-1], -1)
        if e.dim() == 2:
            self.V[j].addmm_(e.t(), e)
            self.C[j].addmm_(e.t(), target)
        else:  # a population: one product per member
            self.V[j].baddbmm_(e.mT, e)
            self.C[j].baddbmm_(e.mT, target)
        B.copy_(torch.linalg.solve(self.V[j], self.C[j]))

    def state_dict(self) -> dict:
        return {"V": {j: v.clone() for j, v in self.V.items()},
                "C": {j: c.clone() for j, c in self.C.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.V = {int(j): v.clone() for j, v in state["V"].items()}
        self.C = {int(j): c.clone() for j, c in state["C"].items()}

    def stack(self, solvers: list[FeedbackSolver]) -> None:
        self.V = {j: torch.stack([s.V[j] for s in solvers]) for j in self.V}
        self.C = {j: torch.stack([s.C[j] for s in solvers]) for j in self.C}

    def keep(self, index: Tensor) -> None:
        self.V = {j: v[index] for j, v in self.V.items()}
        self.C = {j: c[index] for j, c in self.C.items()}


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

    def stack_state(self, rules: list[LearningRule]) -> None:
        self.solver = make_solver(self.net, self.settings, self.direct)
        self.solver.stack([r.solver for r in rules])

    def keep(self, index: Tensor) -> None:
        super().keep(index)
        self.solver.keep(index)

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
