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
    field_validator,
    model_validator,
)

from trainables.catalog import DATASET_NAMES
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
    epochs: int = Field(10, ge=1, le=100_000)
    lr: float | None = Field(
        None, ge=0, description="forward learning rate η (0 freezes W); default: the experiment's"
    )
    noise_std: float = Field(0.01, gt=0, description="std c of the hidden-unit noise")
    feedback_lr: float = Field(0.01, ge=0, description="feedback learning rate η_B (sgd solver)")
    feedback_solver: Literal["sgd", "lstsq"] = "sgd"
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1, le=65_536)
    batches_per_epoch: int | None = Field(
        None, ge=1, description="batches per epoch; default: one pass over the training set"
    )
    seed: int = Field(0, ge=0, lt=2**63)
    device: str = "cpu"
    data_dir: str | None = Field(None, description="data directory; default: $CREDIT_DATA_DIR")
    metrics_batch_size: int = Field(512, ge=1, description="fixed test batch for alignment metrics")
    max_test_samples: int | None = Field(None, ge=1, description="evaluate on a test subset")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str | None) -> str | None:
        if v is not None and v not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(DATASET_NAMES)}")
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
        if self.rule == "kolen_pollack" and self.weight_decay <= 0:
            raise ValueError(
                "rule 'kolen_pollack' needs weight_decay > 0 (without it, use 'matched')"
            )
        return self
