"""The trainer: pure PyTorch, knows the network and the rule only by their interfaces.

One step (trainables/README.md §1–2): a clean forward pass (stacked with the noisy one when the
rule needs it), the output error, errors sent down the rule's pathway, the forward
weights' update by the optimizer, and the rule's feedback learning. Per epoch: the
train loss, the test metrics and the alignment metrics on a fixed batch.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables import metrics as M
from trainables import plots
from trainables.callbacks import Callback, TrainResult
from trainables.config import TrainConfig
from trainables.data import Dataset, load_dataset
from trainables.errors import ConfigError, DivergenceError
from trainables.experiments import EXPERIMENTS, Experiment
from trainables.members import Scalar
from trainables.network import FeedbackNetwork
from trainables.optimizers import Optimizer, make_optimizer
from trainables.rules import LearningRule, RuleSettings, Step, make_rule

Tensor = torch.Tensor
CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use cpu")
    return device


class BatchSampler:
    """An endless stream of shuffled mini-batch indices (drop-last), resumable."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device):
        if batch_size > n:
            raise ConfigError(f"batch_size={batch_size} exceeds the {n} training samples")
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.perm: Tensor | None = None
        self.pos = n

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "pos": self.pos,
                "perm": None if self.perm is None else self.perm.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.pos = state["pos"]
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)


def targets(experiment: Experiment, x: Tensor, y: Tensor, outputs: int) -> Tensor:
    """What the network's output is compared with: the input (autoencoder), the labels
    (cross-entropy) or their one-hot rows (MSE)."""
    if experiment.target == "input":
        return x.flatten(1)
    if experiment.loss == "cross_entropy":
        return y
    return torch.nn.functional.one_hot(y, outputs).to(x.dtype)


def on_device(config: TrainConfig, dataset: Dataset | None) -> tuple[torch.device, Dataset]:
    """The config's device and its dataset there (``dataset``, else loaded)."""
    device = resolve_device(config.device)
    data = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir)
    return device, data.to(device)


def train_step(net: FeedbackNetwork, rule: LearningRule, optimizer: Optimizer, x: Tensor,
               t: Tensor, noise_std: Scalar, noise_gen, grad_scale: float) -> Tensor:
    """One mini-batch update of W (and of B, by the rule); returns the per-sample loss.

    The same code trains one network and a population (``trainables/population.py``):
    there every tensor has a leading member dimension and ``noise_std`` is (K,).
    """
    if rule.uses_noise:
        fp = net.forward_noisy(x, noise_std, noise_gen)
        noisy_loss = net.per_sample_loss(fp.noisy_output, t)
    else:
        fp, noisy_loss = net.forward(x), None
    loss = net.per_sample_loss(fp.output, t)
    e_out = net.output_error(fp, t)
    errors, signals = rule.send_errors(fp, e_out)
    grads = net.weight_gradients(fp, errors)
    rule.update_feedback(Step(fp, e_out, errors, signals, loss, noisy_loss))
    params = net.parameters()
    if rule.tracks_weight_updates:
        old = [w.clone() for w in net.weights]
        optimizer.step(params, grads, scale=grad_scale)
        rule.after_weight_update(torch._foreach_sub(net.weights, old), old)
    else:
        optimizer.step(params, grads, scale=grad_scale)
    return loss


def alignment(net: FeedbackNetwork, rule: LearningRule, x: Tensor,
              target: Tensor) -> list[dict[str, float]]:
    """Per-layer alignment of the rule's pathway with backprop's on the batch ``x``: one
    dict for a network, one per member for a population (each from its own slices)."""
    fp = net.forward(x)
    e_out = net.output_error(fp, target)
    true_errors, true_signals = net.backward(fp, e_out, [None, *net.weights[1:]])
    syn_errors, syn_signals = rule.send_errors(fp, e_out)
    true_grads = net.weight_gradients(fp, true_errors)
    syn_grads = net.weight_gradients(fp, syn_errors)
    pathway = rule.pathway()
    top = len(net.layers) - 1
    members = [(lambda t: t)] if net.members is None else \
        [(lambda t, k=k: t[k]) for k in range(net.members)]
    result = []
    for m in members:
        out: dict[str, float] = {}
        for j in range(1, len(net.layers)):
            name = net.layers[j].name
            out[f"angle/{name}"] = M.mean_sample_angle(m(true_signals[j]), m(syn_signals[j]))
            if not rule.direct or j == top:
                W, B = m(net.weights[j]), m(pathway[j])
                out[f"relative_error/{name}"] = M.relative_error(W, B)
                out[f"sign_congruence/{name}"] = M.sign_congruence(W, B)
        for i in range(top):
            out[f"update_angle/{net.layers[i].name}"] = M.angle_degrees(
                m(syn_grads[2 * i]), m(true_grads[2 * i]))
        result.append(out)
    return result


class Trainer:
    """Trains one configuration; ``fit()`` runs the remaining epochs and returns the result."""

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[Callback] = (),
        dataset: Dataset | None = None,
    ):
        self.config = config
        self.experiment = EXPERIMENTS.get(config.experiment)
        self.device, self.data = on_device(config, dataset)
        self.callbacks = list(callbacks)
        self._batch_callbacks = [
            cb for cb in self.callbacks if type(cb).on_batch_end is not Callback.on_batch_end
        ]

        init_gen = torch.Generator().manual_seed(config.seed)
        exp = self.experiment
        self.net = FeedbackNetwork(
            exp.build_layers(config.hidden_width, config.output_activation), exp.loss,
            self.data.input_shape, init_gen, self.device, init=config.init,
        )
        settings = RuleSettings.from_config(config)
        self.rule = make_rule(config.rule, self.net, settings, init_gen)
        self.optimizer = make_optimizer(
            config.optimizer, config.lr, config.momentum, config.weight_decay
        )
        self.noise_gen = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        self.sampler = BatchSampler(
            len(self.data.x_train), config.batch_size,
            torch.Generator().manual_seed(config.seed + 1), self.device,
        )
        self.train_targets = self._targets(self.data.x_train, self.data.y_train)
        # The authors' protocol: after every step, the summed loss of a few random test images.
        self.step_test_gen = torch.Generator(device=self.device).manual_seed(config.seed + 3)
        self.test_targets = (self._targets(self.data.x_test, self.data.y_test)
                             if config.step_test_images else None)
        self._grad_scale = 1.0 if config.loss_reduction == "sum" else 1.0 / config.batch_size
        n_test = len(self.data.x_test)
        if config.max_test_samples is not None:
            n_test = min(n_test, config.max_test_samples)
        self.n_test = n_test
        m = min(config.metrics_batch_size, len(self.data.x_test))
        self.metrics_x = self.data.x_test[:m]
        self.metrics_t = self._targets(self.metrics_x, self.data.y_test[:m])
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.elapsed = 0.0

    # ---------------------------------------------------------------- helpers
    def _targets(self, x: Tensor, y: Tensor) -> Tensor:
        return targets(self.experiment, x, y, self.net.output_size)

    @property
    def batches_per_epoch(self) -> int:
        if self.config.batches_per_epoch is not None:
            return self.config.batches_per_epoch
        return len(self.data.x_train) // self.config.batch_size

    # ------------------------------------------------------------------- step
    def train_step(self, x: Tensor, t: Tensor) -> Tensor:
        """One mini-batch update of W (and of B, by the rule); returns the per-sample loss."""
        return train_step(self.net, self.rule, self.optimizer, x, t, self.config.noise_std,
                          self.noise_gen, self._grad_scale)

    def step_test_loss(self) -> Tensor:
        """Summed loss of ``step_test_images`` random test images (the authors' metric)."""
        idx = torch.randint(len(self.data.x_test), (self.config.step_test_images,),
                            generator=self.step_test_gen, device=self.device)
        out = self.net.predict(self.data.x_test[idx])
        return self.net.per_sample_loss(out, self.test_targets[idx]).sum()

    # ------------------------------------------------------------------ epoch
    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, then measure; raises ``DivergenceError`` on NaN/inf."""
        start = time.perf_counter()
        epoch = self.epoch + 1
        n_batches = self.batches_per_epoch
        x_train, t_train = self.data.x_train, self.train_targets
        loss_sum = torch.zeros((), device=self.device)
        step_test_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        step_test = self.config.step_test_images > 0
        with torch.no_grad():
            for b in range(n_batches):
                idx = self.sampler.next()
                loss_sum += self.train_step(x_train[idx], t_train[idx]).sum()
                if step_test:
                    step_test_sum += self.step_test_loss()
                for cb in self._batch_callbacks:
                    cb.on_batch_end(self, b, n_batches)
            train_loss = loss_sum.item() / (n_batches * self.config.batch_size)
            if not math.isfinite(train_loss):
                raise DivergenceError(epoch, "the training loss")
            if not self.net.all_finite():
                raise DivergenceError(epoch, "a forward weight")
            if not self.rule.all_finite():
                raise DivergenceError(epoch, "a feedback weight")
            metrics: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
            metrics.update(self.evaluate())
            if step_test:
                metrics["step_test_loss"] = step_test_sum.item() / n_batches
            if not math.isfinite(metrics["test_loss"]):
                raise DivergenceError(epoch, "the test loss")
            metrics.update(self.alignment())
        self.epoch = epoch
        self.elapsed += time.perf_counter() - start
        metrics["time_s"] = self.elapsed
        self.history.append(metrics)
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
        return metrics

    def fit(self) -> TrainResult:
        """Run the epochs still to do (all of them, or the rest after a restore)."""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.epoch < self.config.epochs:
                self.run_epoch()
        except BaseException as error:
            for cb in self.callbacks:
                cb.on_fit_error(self, error)
            raise
        result = self.result()
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def result(self) -> TrainResult:
        final = {k: v for k, v in self.history[-1].items() if k != "epoch"} if self.history else {}
        final["epochs"] = self.epoch
        losses = [h["test_loss"] for h in self.history]
        if losses:
            final["best_test_loss"] = min(losses)
        if self.config.step_test_images and self.history:
            final["best_step_test_loss"] = min(h["step_test_loss"] for h in self.history)
        if self.experiment.classification and self.history:
            final["best_test_error"] = min(h["test_error"] for h in self.history)
        return TrainResult(self.config.model_dump(), list(self.history), final)

    # --------------------------------------------------------------- measures
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean per-sample test loss, and test error (fraction) for classification."""
        chunk = 2000 if all(s.kind == "linear" for s in self.net.layers) else 250
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        for start in range(0, self.n_test, chunk):
            x = self.data.x_test[start : start + chunk][: self.n_test - start]
            y = self.data.y_test[start : start + len(x)]
            out = self.net.predict(x)
            loss_sum += self.net.per_sample_loss(out, self._targets(x, y)).sum()
            if self.experiment.classification:
                wrong += (out.argmax(1) != y).sum()
        result = {"test_loss": loss_sum.item() / self.n_test}
        if self.experiment.classification:
            result["test_error"] = wrong.item() / self.n_test
        return result

    @torch.no_grad()
    def alignment(self) -> dict[str, float]:
        """Per-layer alignment of the rule's pathway with backprop's, on the fixed batch."""
        return alignment(self.net, self.rule, self.metrics_x, self.metrics_t)[0]

    def curve_sheets(self):
        """The renderer of its learning-curve and alignment figures (``plots.CurveSheets``)."""
        return plots.CurveSheets([self.history])

    @torch.no_grad()
    def latent_codes(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The autoencoder's 2-D codes of the test set, with the digit labels."""
        if self.experiment.code_layer is None:
            raise ConfigError(f"experiment {self.experiment.name!r} has no code layer")
        n = self.n_test if limit is None else min(limit, self.n_test)
        codes = self.net.hidden(self.data.x_test[:n], self.experiment.code_layer)
        return codes.cpu().numpy(), self.data.y_test[:n].cpu().numpy()

    @torch.no_grad()
    def reconstructions(self, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(originals, reconstructions) of the first n test images, flat pixel rows."""
        if self.experiment.target != "input":
            raise ConfigError(f"experiment {self.experiment.name!r} is not an autoencoder")
        x = self.data.x_test[:n]
        return x.flatten(1).cpu().numpy(), self.net.predict(x).cpu().numpy()

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.model_dump(),
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "history": list(self.history),
            "net": self.net.state_dict(),
            "rule": self.rule.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "noise_gen": self.noise_gen.get_state(),
            "step_test_gen": self.step_test_gen.get_state(),
            "callbacks": {
                type(cb).__qualname__: s
                for cb in self.callbacks
                if (s := cb.state_dict()) is not None
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"checkpoint version {state.get('version')} is not supported")
        ours = self.config.model_dump()
        defaults = {k: f.default for k, f in TrainConfig.model_fields.items()}
        theirs = {k: state["config"].get(k, defaults[k]) for k in ours}
        differ = sorted(k for k in ours if k not in ("epochs", "device", "data_dir")
                        and ours[k] != theirs[k])
        if differ:
            raise ConfigError(f"checkpoint was made with a different config: {', '.join(differ)}")
        self.epoch = state["epoch"]
        self.elapsed = state["elapsed"]
        self.history = list(state["history"])
        self.net.load_state_dict(state["net"])
        self.rule.load_state_dict(state["rule"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.noise_gen.set_state(state["noise_gen"])
        if "step_test_gen" in state:
            self.step_test_gen.set_state(state["step_test_gen"])
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__qualname__ in saved:
                cb.load_state_dict(saved[type(cb).__qualname__])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write everything needed to continue bit-identically (atomic replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="tmp-ckpt-", suffix=".pt")
        os.close(fd)
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
