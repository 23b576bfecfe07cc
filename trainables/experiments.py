"""The paper's three networks, found by name in ``EXPERIMENTS``."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from trainables.layers import LayerSpec
from trainables.registry import Registry


@dataclass(frozen=True)
class Experiment:
    """A network, its loss, what its targets are, and which datasets it runs on."""

    name: str
    description: str
    layers: tuple[LayerSpec, ...]
    loss: str  # "mse" or "cross_entropy"
    target: str  # "onehot" (classification) or "input" (autoencoder)
    datasets: tuple[str, ...]
    default_dataset: str
    default_lr: float = 0.01  # a stable forward learning rate for batch-mean losses
    code_layer: int | None = None  # hidden layer whose output is the 2-D code
    hidden_width: int | None = None  # the width that ``hidden_width`` may change, if any

    def build_layers(
        self, hidden_width: int | None = None, output_activation: str | None = None
    ) -> tuple[LayerSpec, ...]:
        """The layers, with every hidden layer of the default width resized and the
        output's activation replaced (None keeps the experiment's own)."""
        layers = self.layers
        if hidden_width is not None and hidden_width != self.hidden_width:
            if self.hidden_width is None:
                raise ValueError(f"experiment {self.name!r} has no adjustable hidden width")
            old = self.hidden_width

            def resize(n: int) -> int:
                return hidden_width if n == old else n

            layers = tuple(replace(s, in_size=resize(s.in_size), out_size=resize(s.out_size))
                           for s in layers)
        if output_activation is not None:
            layers = (*layers[:-1], replace(layers[-1], activation=output_activation))
        return layers

    @property
    def threads(self) -> int:
        """Intra-op threads worth using: small MLP steps are dispatch-bound, and extra
        threads only spin (and collide with parallel trials); convolutions scale."""
        if all(spec.kind == "linear" for spec in self.layers):
            return 1
        return os.cpu_count() or 1

    @property
    def classification(self) -> bool:
        return self.target == "onehot"


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def _add(exp: Experiment) -> None:
    EXPERIMENTS.add(exp.name, exp)


_add(Experiment(
    name="mnist-fc",
    description="MNIST 784-50-20-10, sigmoid hidden, linear output, MSE on one-hot targets",
    layers=(
        LayerSpec("fc1", "linear", 784, 50, "sigmoid"),
        LayerSpec("fc2", "linear", 50, 20, "sigmoid"),
        LayerSpec("fc3", "linear", 20, 10, "identity"),
    ),
    loss="mse",
    target="onehot",
    datasets=("mnist", "mnist-5k"),
    default_dataset="mnist-5k",
    default_lr=0.1,
))

_add(Experiment(
    name="mnist-autoencoder",
    description="MNIST autoencoder 784-200-2-200-784, tanh hidden, linear 2-unit bottleneck, MSE",
    layers=(
        LayerSpec("fc1", "linear", 784, 200, "tanh"),
        LayerSpec("fc2", "linear", 200, 2, "identity"),
        LayerSpec("fc3", "linear", 2, 200, "tanh"),
        LayerSpec("fc4", "linear", 200, 784, "identity"),
    ),
    loss="mse",
    target="input",
    datasets=("mnist", "mnist-5k"),
    default_dataset="mnist-5k",
    default_lr=0.003,
    code_layer=1,
    hidden_width=200,
))

# Conv(3x3, 32), MaxPool(3x3, 2), Conv(5x5, 128), MaxPool, Conv(5x5, 256), MaxPool,
# FC 2048, FC 2048, softmax 10 — 'same' padding; 32 → 16 → 8 → 4 pixels.
_POOL = (3, 2, 1)
_add(Experiment(
    name="cifar10-cnn",
    description="CIFAR-10 CNN: conv 32-128-256 with max-pools, FC 2048-2048, softmax 10",
    layers=(
        LayerSpec("conv1", "conv", 3, 32, "relu", kernel_size=3, pool=_POOL),
        LayerSpec("conv2", "conv", 32, 128, "relu", kernel_size=5, pool=_POOL),
        LayerSpec("conv3", "conv", 128, 256, "relu", kernel_size=5, pool=_POOL, flatten=True),
        LayerSpec("fc1", "linear", 256 * 4 * 4, 2048, "relu"),
        LayerSpec("fc2", "linear", 2048, 2048, "relu"),
        LayerSpec("fc3", "linear", 2048, 10, "identity"),
    ),
    loss="cross_entropy",
    target="onehot",
    datasets=("cifar10",),
    default_dataset="cifar10",
))
