"""The typed configuration of one training run (one trial).

The same schema serves the CLI, the Ray Tune trainable, search spaces and the HTTP
API. Every field is validated here, so a bad value fails with its name and the
valid choices before any work starts.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainables.catalog import DATASET_NAMES, check_rule_settings
from trainables.catalog import RULE_NAMES as RULES  # torch-free: the CLI validates fast
from trainables.experiments import EXPERIMENTS

#: A registered experiment or rule name; an unknown one fails listing the valid names.
ExperimentName = Annotated[str, AfterValidator(EXPERIMENTS.check)]
RuleName = Annotated[str, AfterValidator(RULES.check)]
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class TrainConfig(BaseModel):
    """Everything that defines a training run; two equal configs give equal runs on the CPU."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    experiment: ExperimentName = Field(
        "mnist-fc", description="network: " + ", ".join(EXPERIMENTS.names())
    )
    rule: RuleName = Field(
        "node_perturbation", description="learning rule: " + ", ".join(RULES.names())
    )
    dataset: str | None = Field(None, description="dataset; default: the experiment's default")
    epochs: int = Field(10, ge=1, le=100_000, description="number of epochs")
    lr: float | None = Field(
        None, ge=0, le=10_000, description="forward learning rate η (0 freezes W); default: the "
        "experiment's"
    )
    noise_std: float = Field(0.01, gt=0, le=10, description="std c of the hidden-unit noise")
    feedback_lr: float = Field(0.01, ge=0, le=10_000,
                               description="feedback learning rate η_B (sgd solver)")
    feedback_solver: Literal["sgd", "lstsq"] = Field(
        "sgd", description="how the feedback weights are learned"
    )
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="optimizer of the forward weights"
    )
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 weight decay")
    batch_size: int = Field(32, ge=1, le=65_536, description="mini-batch size")
    batches_per_epoch: int | None = Field(
        None, ge=1, le=10_000_000,
        description="batches per epoch; default: one pass over the training set"
    )
    seed: int = Field(0, ge=0, lt=2**63, description="random seed (weights, data order, noise)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    data_dir: str | None = Field(None, description="data directory; default: $CREDIT_DATA_DIR")
    metrics_batch_size: int = Field(512, ge=1, le=65_536,
                                    description="fixed test batch for alignment metrics")
    max_test_samples: int | None = Field(None, ge=1, le=10_000_000,
                                         description="evaluate on a test subset")
    hidden_width: int | None = Field(
        None, ge=1, le=4096,
        description="width of the autoencoder's wide hidden layers (default 200; the "
        "authors' node-perturbation network: 50)",
    )
    output_activation: Literal["identity", "relu"] | None = Field(
        None, description="activation of the output layer; default: the experiment's "
        "(identity); the authors' autoencoder: relu",
    )
    init: Literal["uniform", "authors"] = Field(
        "uniform", description="weight initialisation: uniform ±1/√fan_in (PyTorch's), or "
        "authors (normal truncated at ±2σ, σ = √(2/fan_in), biases 0.1)",
    )
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="loss over the batch that η and η_B apply to: mean, or sum "
        "(the authors' code; rates then are batch_size× smaller for the same step)",
    )
    step_test_images: int = Field(
        0, ge=0, le=10_000,
        description="after every step, the loss on this many random test images, averaged "
        "per epoch (the authors' protocol: 32); 0: off",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str | None) -> str | None:
        if v is not None and v not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(DATASET_NAMES)}")
        return v

    @field_validator("hidden_width")
    @classmethod
    def _width_adjustable(cls, v: int | None, info: ValidationInfo) -> int | None:
        experiment = info.data.get("experiment")
        if v is not None and experiment in EXPERIMENTS and \
                EXPERIMENTS.get(experiment).hidden_width is None:
            widths = [n for n in EXPERIMENTS.names() if EXPERIMENTS.get(n).hidden_width]
            raise ValueError(f"applies only to experiments with an adjustable width "
                             f"({', '.join(widths)}), not {experiment!r}")
        return v

    @field_validator("output_activation")
    @classmethod
    def _mse_output(cls, v: str | None, info: ValidationInfo) -> str | None:
        experiment = info.data.get("experiment")
        if v is not None and experiment in EXPERIMENTS and \
                EXPERIMENTS.get(experiment).loss != "mse":
            raise ValueError(f"applies to MSE networks only; {experiment!r} feeds its output "
                             "to a softmax")
        return v

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"unknown device {v!r}; valid: cpu, cuda, cuda:N")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        exp = EXPERIMENTS.get(self.experiment)
        if self.lr is None:
            object.__setattr__(self, "lr", exp.default_lr)
        if self.dataset is None:
            object.__setattr__(self, "dataset", exp.default_dataset)
        elif self.dataset not in exp.datasets:
            raise ValueError(
                f"dataset {self.dataset!r} does not fit experiment {self.experiment!r}; "
                f"valid: {', '.join(exp.datasets)}"
            )
        check_rule_settings(self.rule, self.weight_decay)
        return self
