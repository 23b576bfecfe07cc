"""The feed-forward network with its error pathways written out as tensor maths.

Notation follows trainables/README.md §1, with 0-based layer indices: layer ``i`` maps
``h[i-1]`` to ``a[i] = W[i] h[i-1] + b[i]`` and ``h[i] = post(a[i])``, where ``post``
is the activation, then (for convolutions) an optional max-pool and a flatten.
``h[-1]`` is the input ``x`` and ``h[L-1]`` is the output ``ŷ``.

Errors are computed without autograd: for every layer the local Jacobians are
applied explicitly, and the matrix that carries an error *down* through layer
``j`` is chosen by the learning rule (``W[j]`` for backprop, ``B[j]`` otherwise).
That keeps one step of a small MLP to a few dozen tensor operations, which is what
makes a node-perturbation step cheaper than a plain autograd step (measured by
``tests/bench/bench_trainer.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainables.errors import ConfigError
from trainables.layers import LOSSES, LayerSpec
from trainables.members import Scalar, per_member

Tensor = torch.Tensor
_conv_backward = torch.ops.aten.convolution_backward
_pool_backward = torch.ops.aten.max_pool2d_with_indices_backward

#: Weight initialisations: ``uniform`` draws W and b from U(±1/√fan_in) (PyTorch's
#: nn.Linear default); ``authors`` is the authors' TensorFlow code: W from a normal
#: truncated at ±2σ with σ = √(2/fan_in), every bias 0.1.
INITS = ("uniform", "authors")


def init_weight(shape: tuple[int, ...], fan_in: int, init: str,
                generator: torch.Generator) -> Tensor:
    """A weight (or feedback) matrix drawn by ``init`` (see ``INITS``)."""
    w = torch.empty(shape)
    if init == "uniform":
        bound = 1.0 / math.sqrt(fan_in)
        return w.uniform_(-bound, bound, generator=generator)
    if init == "authors":
        std = math.sqrt(2.0 / fan_in)
        return torch.nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std, generator=generator)
    raise ConfigError(f"unknown init {init!r}; valid: {', '.join(INITS)}")


@dataclass
class LayerRecord:
    """What the backward pass needs from one layer of the clean forward pass."""

    inp: Tensor  # h[i-1] as this layer consumed it
    a: Tensor  # pre-activation
    z: Tensor  # activation output, before pooling
    h_shape: torch.Size  # shape of h[i] before flattening
    pool_indices: Tensor | None = None


@dataclass
class ForwardPass:
    records: list[LayerRecord]
    output: Tensor  # ŷ of the clean pass
    noisy_output: Tensor | None = None
    noise: list[Tensor] = field(default_factory=list)  # ξ per hidden layer (unit variance)


def _activate(kind: str, a: Tensor) -> Tensor:
    if kind == "sigmoid":
        return torch.sigmoid(a)
    if kind == "tanh":
        return torch.tanh(a)
    if kind == "relu":
        return torch.relu(a)
    return a


def _activation_vjp(kind: str, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
    """grad ∘ σ'(a), with σ' written in terms of the stored output z = σ(a)."""
    if kind == "sigmoid":
        return grad * z * (1.0 - z)
    if kind == "tanh":
        return grad * (1.0 - z * z)
    if kind == "relu":
        return grad * (a > 0)
    return grad


class FeedbackNetwork:
    """Forward weights ``W``/``b`` of a network and its explicit error pathways.

    The network holds plain tensors (no autograd, no ``nn.Module``); learning rules
    and optimizers update them in place.

    A *population* (``stack``) holds K same-shaped networks at once: every weight gets a
    leading member dimension ((K, out, in), or (K, out, in, k, k) for a convolution),
    activations are (K, batch, features) or (K, batch, channels, height, width), and the
    same code runs all members: batched products for linear layers, grouped convolutions
    (K groups) for convolutions. A batch shared by all members keeps its own shape and
    broadcasts (a shared image batch meets the first layer's K·out filters at once).
    """

    #: K for a population of K stacked networks, None for one network.
    members: int | None = None
    #: A population's member → its noise generator (``draw_noise``).
    noise_index: Tensor | None = None

    def __init__(
        self,
        layers: tuple[LayerSpec, ...] | list[LayerSpec],
        loss: str,
        input_shape: tuple[int, ...],
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        init: str = "uniform",
    ):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; valid: {LOSSES}")
        self.layers = tuple(layers)
        self.loss = loss
        self.input_shape = tuple(input_shape)
        self.device = torch.device(device)
        self.init = init
        self.weights: list[Tensor] = []
        self.biases: list[Tensor] = []
        for spec in self.layers:
            w = init_weight(spec.weight_shape, spec.fan_in, init, generator)
            if init == "authors":
                b = torch.full((spec.out_size,), 0.1)
            else:
                b = init_weight((spec.out_size,), spec.fan_in, init, generator)
            self.weights.append(w.to(self.device))
            self.biases.append(b.to(self.device))
        self.hidden_shapes = self._infer_hidden_shapes()

    @classmethod
    def stack(cls, nets: list[FeedbackNetwork]) -> FeedbackNetwork:
        """A population of ``nets`` (one per member; the same object may repeat): their
        weights stacked along a new leading dimension."""
        first = nets[0]
        pop = cls.__new__(cls)
        pop.__dict__.update(first.__dict__)
        pop.weights = [torch.stack([n.weights[i] for n in nets]) for i in range(len(first.layers))]
        pop.biases = [torch.stack([n.biases[i] for n in nets]) for i in range(len(first.layers))]
        pop.members = len(nets)
        return pop

    def keep(self, index: Tensor) -> None:
        """Keep only the members at ``index`` (a population drops stopped members)."""
        self.weights = [w[index] for w in self.weights]
        self.biases = [b[index] for b in self.biases]
        self.members = len(index)
        if self.noise_index is not None:
            self.noise_index = self.noise_index[index]

    def rows(self, t: Tensor, start: int, stop: int | None = None) -> Tensor:
        """Samples ``start:stop`` of a batch of activations (dim 0, or dim 1 of a population's)."""
        dim = 0 if self.members is None or t.dim() < 3 else 1
        stop = t.shape[dim] if stop is None else stop
        return t.narrow(dim, start, stop - start)

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | list,
                   device: torch.device) -> Tensor:
        """ξ ~ N(0, I) of one layer's hidden units for a batch: from one generator (shared
        by all members of a population), or from a list of them (one per training seed
        of a population; member k draws from ``generator[noise_index[k]]``)."""
        if isinstance(generator, list):
            draws = [torch.randn(shape, generator=g, device=device) for g in generator]
            return torch.stack(draws)[self.noise_index]
        return torch.randn(shape, generator=generator, device=device)

    # ----------------------------------------------------------------- shapes
    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.layers]

    @property
    def output_size(self) -> int:
        return self.layers[-1].out_size

    def parameters(self) -> list[Tensor]:
        """Forward parameters in a fixed order: W0, b0, W1, b1, ..."""
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    def _infer_hidden_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shape of h[i] as the next layer sees it (flattened if requested)."""
        x = torch.zeros((1, *self.input_shape), device=self.device)
        shapes = []
        with torch.no_grad():
            for i in range(len(self.layers)):
                x, _ = self._layer_forward(i, x)
                shapes.append(tuple(x.shape[1:]))
        return shapes

    # ---------------------------------------------------------------- forward
    def _layer_forward(self, i: int, inp: Tensor) -> tuple[Tensor, LayerRecord]:
        spec = self.layers[i]
        if spec.kind == "linear" and self.members is not None:
            a = torch.matmul(inp, self.weights[i].mT).add_(self.biases[i].unsqueeze(1))
        elif spec.kind == "linear":
            a = torch.addmm(self.biases[i], inp, self.weights[i].t())
        elif self.members is not None:
            a = self._stacked_conv(i, inp)
        else:
            a = F.conv2d(inp, self.weights[i], self.biases[i], padding=spec.kernel_size // 2)
        z = _activate(spec.activation, a)
        h, indices = z, None
        if spec.pool is not None:
            k, s, p = spec.pool
            if z.dim() == 5:  # a population's planes: (K·batch, channels, height, width)
                h, indices = F.max_pool2d(z.flatten(0, 1), k, s, p, return_indices=True)
                h, indices = h.unflatten(0, z.shape[:2]), indices.unflatten(0, z.shape[:2])
            else:
                h, indices = F.max_pool2d(z, k, s, p, return_indices=True)
        h_shape = h.shape
        if spec.flatten:
            h = h.flatten(-3)  # channels, height, width → features
        return h, LayerRecord(inp, a, z, h_shape, indices)

    def _stacked_conv(self, i: int, inp: Tensor) -> Tensor:
        """Layer ``i``'s convolution of every member: ``inp`` shared (batch, C, H, W) meets
        all K·out filters in one convolution; a population's (K, batch, C, H, W) is K
        groups of one grouped convolution. Returns (K, batch, out, H, W)."""
        spec, w = self.layers[i], self.weights[i]
        k = w.shape[0]
        shared = inp.dim() == 4
        a = F.conv2d(inp if shared else _to_groups(inp), w.flatten(0, 1),
                     self.biases[i].flatten(), padding=spec.kernel_size // 2,
                     groups=1 if shared else k)
        return _from_groups(a, k)

    def forward(self, x: Tensor) -> ForwardPass:
        """Clean forward pass, keeping what the backward pass needs."""
        records = []
        h = x
        for i in range(len(self.layers)):
            h, rec = self._layer_forward(i, h)
            records.append(rec)
        return ForwardPass(records, h)

    def predict(self, x: Tensor) -> Tensor:
        h = x
        for i in range(len(self.layers)):
            h, _ = self._layer_forward(i, h)
        return h

    def hidden(self, x: Tensor, layer: int) -> Tensor:
        """h[layer] for a batch (e.g. the autoencoder's 2-D code)."""
        h = x
        for i in range(layer + 1):
            h, _ = self._layer_forward(i, h)
        return h

    def forward_noisy(self, x: Tensor, noise_std: Scalar,
                      generator: torch.Generator) -> ForwardPass:
        """Clean and noisy passes stacked into one batch.

        The noisy pass adds ``noise_std · ξ`` (ξ ~ N(0, I)) to every hidden layer's
        output, after the nonlinearity, all layers at once; the output is not
        perturbed. Both passes share layer 0's input, so the stack starts after it.
        """
        # a population's batch is shared (a sample's rank + 1 dims) or per member (+ 2)
        per_member_batch = self.members is not None and x.dim() == len(self.input_shape) + 2
        n = x.shape[1] if per_member_batch else x.shape[0]
        cat_dim = 0 if self.members is None else 1
        records = []
        noise = []
        last = len(self.layers) - 1
        h = x
        for i in range(len(self.layers)):
            h, rec = self._layer_forward(i, h)
            if i > 0:  # stacked: keep the clean half for the backward pass
                rec = LayerRecord(
                    self.rows(rec.inp, 0, n),
                    self.rows(rec.a, 0, n),
                    self.rows(rec.z, 0, n),
                    torch.Size((*rec.h_shape[:cat_dim], n, *rec.h_shape[cat_dim + 1:])),
                    None if rec.pool_indices is None else self.rows(rec.pool_indices, 0, n),
                )
            records.append(rec)
            if i < last:
                per_sample = h.shape[cat_dim + 1:]
                xi = self.draw_noise((n, *per_sample), generator, h.device)
                noise.append(xi)
                scaled = per_member(noise_std, h) * xi if isinstance(noise_std, Tensor) else None
                if i == 0:
                    h = torch.cat([h, h + (noise_std * xi if scaled is None else scaled)], cat_dim)
                elif scaled is None:
                    self.rows(h, n).add_(xi, alpha=noise_std)
                else:
                    self.rows(h, n).add_(scaled)
        return ForwardPass(records, self.rows(h, 0, n), self.rows(h, n), noise)

    # ------------------------------------------------------------------- loss
    def per_sample_loss(self, y_hat: Tensor, target: Tensor) -> Tensor:
        """L per sample: ½‖ŷ − t‖² (MSE) or −log softmax(ŷ)_t (cross-entropy, t = labels)."""
        if self.loss == "mse":
            d = y_hat - target
            return 0.5 * (d * d).sum(-1)
        picked = y_hat.gather(-1, target.expand(y_hat.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        return torch.logsumexp(y_hat, -1) - picked

    def output_error(self, fp: ForwardPass, target: Tensor) -> Tensor:
        """e[L-1] = ∂L/∂ŷ ∘ σ'(a[L-1]) per sample."""
        y_hat = fp.output
        if self.loss == "mse":
            grad = y_hat - target
        else:
            grad = torch.softmax(y_hat, -1)  # − onehot(t): labels shared or per member
            picked = target.expand(y_hat.shape[:-1]).unsqueeze(-1)
            grad.scatter_(-1, picked, grad.gather(-1, picked) - 1.0)
        rec = fp.records[-1]
        return _activation_vjp(self.layers[-1].activation, rec.a, rec.z, grad)

    # --------------------------------------------------------------- backward
    def send_down(self, j: int, e: Tensor, matrix: Tensor, rec: LayerRecord) -> Tensor:
        """λ[j-1] = matrixᵀ e[j]: the error layer j sends to h[j-1], flattened as h[j-1]."""
        spec = self.layers[j]
        if spec.kind == "linear":
            return e @ matrix
        if self.members is not None:  # K groups (a population's layers j ≥ 1 see its own)
            k = matrix.shape[0]
            grad_inp, _, _ = _conv_backward(
                _to_groups(e), _to_groups(rec.inp), matrix.flatten(0, 1), None, [1, 1],
                [spec.kernel_size // 2] * 2, [1, 1], False, [0, 0], k, [True, False, False],
            )
            return _from_groups(grad_inp, k)
        grad_inp, _, _ = _conv_backward(
            e, rec.inp, matrix, None, [1, 1], [spec.kernel_size // 2] * 2, [1, 1],
            False, [0, 0], 1, [True, False, False],
        )
        return grad_inp

    def send_direct(self, e_out: Tensor, matrix: Tensor) -> Tensor:
        """Direct feedback: λ = Bᵀ e[L-1], B of shape (outputs, size of h)."""
        return e_out @ matrix

    def post_vjp(self, i: int, lam: Tensor, rec: LayerRecord) -> Tensor:
        """e[i] = ∂h[i]/∂a[i]ᵀ λ[i]: through flatten, max-pool and the activation."""
        spec = self.layers[i]
        grad = lam.reshape(rec.h_shape)
        if spec.pool is not None:
            k, s, p = spec.pool
            planes = rec.z.dim() == 5  # a population's: (K·batch, channels, height, width)
            grad = _pool_backward(
                grad.flatten(0, 1) if planes else grad, rec.z.flatten(0, 1) if planes else rec.z,
                [k, k], [s, s], [p, p], [1, 1], False,
                rec.pool_indices.flatten(0, 1) if planes else rec.pool_indices,
            )
            if planes:
                grad = grad.unflatten(0, rec.z.shape[:2])
        return _activation_vjp(spec.activation, rec.a, rec.z, grad)

    def backward(
        self,
        fp: ForwardPass,
        e_out: Tensor,
        feedback: list[Tensor | None],
        direct: bool = False,
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        """Errors of every layer and the signals λ that produced them.

        ``feedback[j]`` (j ≥ 1) carries the error to h[j-1]: a matrix shaped like
        ``W[j]`` (layer-wise) or ``(outputs, size of h[j-1])`` (``direct``).
        Returns ``errors[i]`` = ẽ[i] and ``signals[j]`` = λ̃[j-1] (``signals[0]`` is None).
        """
        n_layers = len(self.layers)
        errors: list[Tensor] = [e_out] * n_layers
        signals: list[Tensor | None] = [None] * n_layers
        e = e_out
        for j in range(n_layers - 1, 0, -1):
            rec = fp.records[j - 1]
            if direct:
                lam = self.send_direct(e_out, feedback[j])
            else:
                lam = self.send_down(j, e, feedback[j], fp.records[j])
            signals[j] = lam
            e = self.post_vjp(j - 1, lam, rec)
            errors[j - 1] = e
        return errors, signals

    def weight_gradients(self, fp: ForwardPass, errors: list[Tensor]) -> list[Tensor]:
        """Batch-summed ∂/∂W, ∂/∂b from the errors: ΔW[i] ∝ ẽ[i] h[i-1]ᵀ (trainables/README.md §1).

        Returned in ``parameters()`` order; divide by the batch size for the mean.
        """
        grads = []
        for i, spec in enumerate(self.layers):
            e, rec = errors[i], fp.records[i]
            if spec.kind == "linear":
                grads.append(e.mT @ rec.inp)
                grads.append(e.sum(-2))
            else:
                grads.extend(self._conv_weight_gradient(i, e, rec.inp, self.weights[i],
                                                        bias=True))
        return grads

    def _conv_weight_gradient(self, i: int, e: Tensor, inp: Tensor, weight: Tensor,
                              bias: bool) -> list[Tensor]:
        """Batch-summed ∂/∂W (and ∂/∂b) of convolution ``i`` given its output's error
        ``e`` and its input ``inp``: K groups in a population (one convolution with K·out
        filters when ``inp`` is the batch all members share)."""
        spec = self.layers[i]
        pad, mask = [spec.kernel_size // 2] * 2, [False, True, bias]
        if self.members is None:
            _, gw, gb = _conv_backward(e, inp, weight, [spec.out_size] if bias else None,
                                       [1, 1], pad, [1, 1], False, [0, 0], 1, mask)
            return [gw, gb] if bias else [gw]
        k = weight.shape[0]
        shared = inp.dim() == 4
        _, gw, gb = _conv_backward(
            _to_groups(e), inp if shared else _to_groups(inp), weight.flatten(0, 1),
            [k * spec.out_size] if bias else None, [1, 1], pad, [1, 1], False, [0, 0],
            1 if shared else k, mask)
        gw = gw.unflatten(0, (k, spec.out_size))
        return [gw, gb.unflatten(0, (k, spec.out_size))] if bias else [gw]

    def feedback_gradient(
        self, j: int, e: Tensor, residual: Tensor, rec_j: LayerRecord | None, direct: bool
    ) -> Tensor:
        """Batch-summed ∂/∂B of ½‖Bᵀe − λ̂‖² for the feedback of layer j, given residual Bᵀe − λ̂."""
        if direct or self.layers[j].kind == "linear":
            return e.mT @ residual
        return self._conv_weight_gradient(j, e, residual, self.weights[j], bias=False)[0]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"weights": [w.clone() for w in self.weights],
                "biases": [b.clone() for b in self.biases]}

    def load_state_dict(self, state: dict) -> None:
        for dst, src in zip(self.weights + self.biases, state["weights"] + state["biases"],
                            strict=True):
            dst.copy_(src)

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.parameters())

    def finite_members(self) -> Tensor:
        """Per member of a population: are all its forward parameters finite? (K,) bool."""
        return finite_rows(self.parameters())


def _to_groups(t: Tensor) -> Tensor:
    """A population's (K, batch, C, H, W) as one batch of K·C channels (K groups)."""
    return t.transpose(0, 1).flatten(1, 2)


def _from_groups(t: Tensor, k: int) -> Tensor:
    """(batch, K·C, H, W) back to a population's (K, batch, C, H, W)."""
    return t.unflatten(1, (k, -1)).transpose(0, 1).contiguous()


def finite_rows(tensors: list[Tensor]) -> Tensor:
    """(K,) bool: member k's slice of every tensor is finite."""
    ok = torch.ones(len(tensors[0]), dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.flatten(1)).all(1)
    return ok
