"""What a member of a population costs in memory, torch-free: a study's driver sizes
``population: "auto"`` with it (``StudySpec.members``) before any trial runs."""

from __future__ import annotations

import math

from trainables.config import TrainConfig
from trainables.experiments import EXPERIMENTS


def member_bytes(config: TrainConfig) -> int:
    """An estimate of one member's memory: its weights, feedback, gradients, optimizer and
    solver states, and a step's activations (clean and noisy), in float32."""
    layers = EXPERIMENTS.get(config.experiment).build_layers(config.hidden_width,
                                                              config.output_activation)
    params = sum(math.prod(s.weight_shape) + s.out_size for s in layers)
    states = 4 + (2 if config.optimizer == "adam" else 1)  # W, B, grad, ΔW; m, v or velocity
    units = layer_units(layers)
    solver = sum(s.out_size ** 2 for s in layers) if config.feedback_solver == "lstsq" else 0
    activations = config.batch_size * 2 * sum(units) * 6
    return 4 * (params * states + 2 * solver + activations)


def layer_units(layers) -> list[int]:
    """Each layer's units per sample, before its pool: features, or channels × pixels (a
    convolution's pixels found back from the flattened size the first linear layer takes,
    through the pools' strides)."""
    units, side = [], None
    for i in range(len(layers) - 1, -1, -1):
        spec = layers[i]
        if spec.kind == "linear":
            units.append(spec.out_size)
            if i and layers[i - 1].kind == "conv":
                side = math.isqrt(spec.in_size // layers[i - 1].out_size)
            continue
        stride = spec.pool[1] if spec.pool else 1
        side = (side or 1) * stride  # the pool's input: its output × its stride
        units.append(spec.out_size * side * side)
    return units[::-1]
