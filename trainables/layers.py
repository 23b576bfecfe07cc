"""A weight layer's specification, without torch: experiments and configs import it cheaply."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from trainables.errors import ConfigError

__all__ = ["ACTIVATIONS", "LAYER_METRICS", "LOSSES", "LayerSpec"]

ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity")
LOSSES = ("mse", "cross_entropy")
#: The per-layer metric families a trial reports as ``<family>/<layer>``
#: (``trainables/metrics.py`` computes them; named here, torch-free, for specs to check).
LAYER_METRICS = ("angle", "relative_error", "sign_congruence", "update_angle")


@dataclass(frozen=True)
class LayerSpec:
    """One weight layer: a linear map or a stride-1 'same' convolution, then ``post``."""

    name: str
    kind: Literal["linear", "conv"]
    in_size: int  # features (linear) or channels (conv)
    out_size: int
    activation: str = "identity"
    kernel_size: int = 1
    pool: tuple[int, int, int] | None = None  # max-pool (kernel, stride, padding)
    flatten: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; valid: {ACTIVATIONS}")
        if self.kind not in ("linear", "conv"):
            raise ConfigError(f"unknown layer kind {self.kind!r}; valid: linear, conv")

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_size, self.in_size)
        return (self.out_size, self.in_size, self.kernel_size, self.kernel_size)

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape[1:])
