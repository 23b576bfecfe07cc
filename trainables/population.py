"""A population: K configurations of one network trained together as one stacked model.

Every member has its own η, c, η_B, momentum, weight decay and training seed (the
``MEMBER_FIELDS``); everything else (experiment, rule, optimizer, widths, batch size,
epochs) is shared. The members' weights, feedback, solver and optimizer states are
stacked along a leading member dimension, so one step of the population is one set of
batched matrix products and grouped convolutions (``trainer.train_step``, the same code
as one network's; ``FeedbackNetwork`` holds the stacked layers).

A member's numbers are those of training it alone: its weights and feedback start from
its seed as a lone ``Trainer``'s would, it sees the same batches and the same noise
(members that share a seed share them; each seed has its own generators), and every
operation acts on each member's slice alone. ``tests/trainables/test_population.py``
checks this for every rule, to 1e-10 in float64.

A member that diverges fails alone: it is dropped from the stack (``keep``) and the rest
go on; ``stop`` drops members the caller stopped early (successive halving).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainables import plots
from trainables.callbacks import Callback, TrainResult
from trainables.config import TrainConfig
from trainables.data import Dataset
from trainables.errors import ConfigError, DivergenceError
from trainables.experiments import EXPERIMENTS
from trainables.network import FeedbackNetwork
from trainables.optimizers import make_optimizer
from trainables.rules import RuleSettings, make_rule
from trainables.trainer import (
    BatchSampler,
    alignment,
    on_device,
    targets,
    train_step,
)

Tensor = torch.Tensor
CHECKPOINT_VERSION = 1
#: The fields members of a population may set differently.
MEMBER_FIELDS = ("lr", "momentum", "weight_decay", "noise_std", "feedback_lr", "seed")
#: Per-member numbers the rule and the optimizer read (all but the seed).
_NUMBERS = MEMBER_FIELDS[:-1]


def shared_fields(configs: Sequence[TrainConfig]) -> dict[str, Any]:
    """The fields all ``configs`` share (all but ``MEMBER_FIELDS``); a ``ConfigError``
    names those that differ."""
    first = configs[0].model_dump(exclude=set(MEMBER_FIELDS))
    differ = sorted({k for c in configs[1:]
                     for k, v in c.model_dump(exclude=set(MEMBER_FIELDS)).items()
                     if v != first[k]})
    if differ:
        raise ConfigError(f"members of a population must share {', '.join(differ)}; "
                          f"only {', '.join(MEMBER_FIELDS)} may differ")
    return first


class Member:
    """One member as its callbacks see it: the attributes a ``Trainer`` offers them."""

    def __init__(self, population: PopulationTrainer, key: str, config: TrainConfig):
        self.population = population
        self.key = key
        self.config = config
        self.history: list[dict[str, float]] = []
        self.experiment = population.experiment
        self.error: BaseException | None = None

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def index(self) -> int:
        """The member's row in the stacked tensors (it moves when members are dropped)."""
        return self.population.keys.index(self.key)

    def result(self) -> TrainResult:
        final = {k: v for k, v in self.history[-1].items() if k != "epoch"} \
            if self.history else {}
        final["epochs"] = self.epoch
        if self.history:
            final["best_test_loss"] = min(h["test_loss"] for h in self.history)
            if self.experiment.classification:
                final["best_test_error"] = min(h["test_error"] for h in self.history)
        return TrainResult(self.config.model_dump(), list(self.history), final)

    def curve_sheets(self):
        """Its figures' renderer: shared with the population's other members."""
        return self.population.curve_sheets()

    @torch.no_grad()
    def latent_codes(self, limit: int | None = None):
        pop = self.population
        n = pop.n_test if limit is None else min(limit, pop.n_test)
        codes = pop.net.hidden(pop.data.x_test[:n], self.experiment.code_layer)[self.index]
        return codes.cpu().numpy(), pop.data.y_test[:n].cpu().numpy()

    @torch.no_grad()
    def reconstructions(self, n: int = 8):
        x = self.population.data.x_test[:n]
        return x.flatten(1).cpu().numpy(), \
            self.population.net.predict(x)[self.index].cpu().numpy()


class PopulationTrainer:
    """Trains ``configs`` (one per member, named by ``keys``) as one stacked model.

    ``callbacks[key]`` are the member's own (called with its ``Member``); ``on_epoch``
    callables are called after each epoch with the population, once every member's
    callbacks ran (e.g. to report to Tune).
    """

    def __init__(self, configs: Sequence[TrainConfig], keys: Sequence[str] | None = None,
                 callbacks: Mapping[str, Sequence[Callback]] | None = None,
                 dataset: Dataset | None = None):
        if not configs:
            raise ConfigError("a population needs at least one member")
        keys = [str(k) for k in (keys if keys is not None else range(len(configs)))]
        if len(set(keys)) != len(keys) or len(keys) != len(configs):
            raise ConfigError("a population's members need distinct keys, one per config")
        shared_fields(configs)
        base = configs[0]
        self.config = base
        self.experiment = EXPERIMENTS.get(base.experiment)
        self.device, self.data = on_device(base, dataset)
        self.keys = list(keys)
        self.members = {k: Member(self, k, c) for k, c in zip(keys, configs, strict=True)}
        self.callbacks = {k: list((callbacks or {}).get(k, ())) for k in keys}
        self.failed: dict[str, str] = {}  # key → why it failed
        self.stopped: list[str] = []  # keys stopped early by the caller
        self._sheets = None  # (records plotted, plots.CurveSheets) of curve_sheets
        self._build(configs)
        self.train_targets = self._targets(self.data.x_train, self.data.y_train)
        self.test_targets = self._targets(self.data.x_test, self.data.y_test)
        self._grad_scale = 1.0 if base.loss_reduction == "sum" else 1.0 / base.batch_size
        self.n_test = len(self.data.x_test) if base.max_test_samples is None \
            else min(len(self.data.x_test), base.max_test_samples)
        m = min(base.metrics_batch_size, len(self.data.x_test))
        self.metrics_x = self.data.x_test[:m]
        self.metrics_t = self._targets(self.metrics_x, self.data.y_test[:m])
        self.epoch = 0
        self.elapsed = 0.0

    def _build(self, configs: Sequence[TrainConfig]) -> None:
        """Each member's network and rule as a lone trainer builds them (one network per
        seed), stacked; generators per seed; per-member numbers as (K,) tensors."""
        base, exp = configs[0], self.experiment
        layers = exp.build_layers(base.hidden_width, base.output_activation)
        self.seeds = sorted({c.seed for c in configs})
        nets: dict[int, tuple[FeedbackNetwork, Tensor]] = {}
        rules = []
        for c in configs:
            if c.seed not in nets:
                g = torch.Generator().manual_seed(c.seed)
                net = FeedbackNetwork(layers, exp.loss, self.data.input_shape, g, self.device,
                                      init=c.init)
                nets[c.seed] = (net, g.get_state())
            net, state = nets[c.seed]
            g = torch.Generator()
            g.set_state(state)
            rules.append(make_rule(c.rule, net, RuleSettings.from_config(c), g))
        self.net = FeedbackNetwork.stack([nets[c.seed][0] for c in configs])
        dtype = self.net.weights[0].dtype
        numbers = {f: torch.tensor([getattr(c, f) for c in configs], dtype=dtype,
                                   device=self.device) for f in _NUMBERS}
        settings = RuleSettings(**{f.name: numbers.get(f.name, getattr(base, f.name))
                                   for f in RuleSettings.__dataclass_fields__.values()})
        self.rule = type(rules[0]).stack(rules, self.net, settings)
        self.optimizer = make_optimizer(base.optimizer, numbers["lr"], numbers["momentum"],
                                        numbers["weight_decay"])
        self.seed_index = torch.tensor([self.seeds.index(c.seed) for c in configs],
                                       device=self.device)
        self.net.noise_index = self.seed_index
        gens = [torch.Generator(device=self.device).manual_seed(s + 2) for s in self.seeds]
        self.noise_gen = gens[0] if len(gens) == 1 else gens
        self.samplers = [BatchSampler(len(self.data.x_train), base.batch_size,
                                      torch.Generator().manual_seed(s + 1), self.device)
                         for s in self.seeds]
        self.step_test_gens = [torch.Generator(device=self.device).manual_seed(s + 3)
                               for s in self.seeds]

    # ---------------------------------------------------------------- helpers
    def _targets(self, x: Tensor, y: Tensor) -> Tensor:
        return targets(self.experiment, x, y, self.net.output_size)

    def _per_seed(self, draws: list[Tensor]) -> Tensor:
        """One draw per seed → the members' view: shared when all members share a seed."""
        return draws[0] if len(draws) == 1 else torch.stack(draws)[self.seed_index]

    @property
    def batches_per_epoch(self) -> int:
        if self.config.batches_per_epoch is not None:
            return self.config.batches_per_epoch
        return len(self.data.x_train) // self.config.batch_size

    @property
    def alive(self) -> list[str]:
        return list(self.keys)

    # ------------------------------------------------------------- membership
    def keep(self, keys: Sequence[str]) -> None:
        """Keep only the members ``keys`` (in their current order) in the stack."""
        keep = set(keys)
        rows = [i for i, k in enumerate(self.keys) if k in keep]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.keys = [self.keys[i] for i in rows]
        self.net.keep(index)
        self.rule.keep(index)
        self.optimizer.keep(index)
        self.seed_index = self.seed_index[index]

    def stop(self, keys: Sequence[str]) -> None:
        """Stop members early (e.g. successive halving): their runs end, the rest go on."""
        keys = [k for k in keys if k in self.keys]
        for k in keys:
            self.stopped.append(k)
            for cb in self.callbacks[k]:
                cb.on_fit_error(self.members[k], SystemExit("stopped early"))
        if keys:
            self.keep([k for k in self.keys if k not in keys])

    def _fail(self, failures: dict[str, DivergenceError]) -> None:
        for k, error in failures.items():
            self.failed[k] = str(error)
            self.members[k].error = error
            for cb in self.callbacks[k]:
                cb.on_fit_error(self.members[k], error)
        if failures:
            self.keep([k for k in self.keys if k not in failures])

    # ------------------------------------------------------------------ epoch
    def step_test_loss(self) -> Tensor:
        """Per member: the summed loss of ``step_test_images`` random test images."""
        n = self.config.step_test_images
        idx = self._per_seed([torch.randint(len(self.data.x_test), (n,), generator=g,
                                            device=self.device) for g in self.step_test_gens])
        out = self.net.predict(self.data.x_test[idx])
        return self.net.per_sample_loss(out, self.test_targets[idx]).sum(-1)

    def run_epoch(self) -> dict[str, dict[str, float]]:
        """Train one epoch, then measure each member; members that diverged fail alone.
        Returns the metrics of the members still in the population, by key."""
        start = time.perf_counter()
        epoch = self.epoch + 1
        n_batches = self.batches_per_epoch
        cfg = self.config
        k = len(self.keys)
        loss_sum = torch.zeros(k, device=self.device)
        step_test_sum = torch.zeros(k, device=self.device, dtype=torch.float64)
        step_test = cfg.step_test_images > 0
        with torch.no_grad():
            for _ in range(n_batches):
                idx = self._per_seed([s.next() for s in self.samplers])
                x, t = self.data.x_train[idx], self.train_targets[idx]
                loss_sum += train_step(self.net, self.rule, self.optimizer, x, t,
                                       self.rule.settings.noise_std, self.noise_gen,
                                       self._grad_scale).sum(-1)
                if step_test:
                    step_test_sum += self.step_test_loss()
            mean = loss_sum.double() / (n_batches * cfg.batch_size)
            train_loss = dict(zip(self.keys, mean.tolist(), strict=True))
            step_tests = dict(zip(self.keys, (step_test_sum / n_batches).tolist(), strict=True))
            weights_ok = self.net.finite_members().tolist()
            feedback_ok = self.rule.finite_members().tolist()
            failures = {}
            for i, key in enumerate(self.keys):
                what = ("the training loss" if not math.isfinite(train_loss[key]) else
                        "a forward weight" if not weights_ok[i] else
                        "a feedback weight" if not feedback_ok[i] else None)
                if what:
                    failures[key] = DivergenceError(epoch, what)
            self._fail(failures)
            metrics = self._measure(epoch, train_loss, step_tests)
        self.epoch = epoch
        self.elapsed += time.perf_counter() - start
        for key, m in metrics.items():  # every history first: the figures share axes
            m["time_s"] = self.elapsed
            self.members[key].history.append(m)
        for key, m in metrics.items():
            for cb in self.callbacks[key]:
                cb.on_epoch_end(self.members[key], m)
        return metrics

    def curve_sheets(self):
        """The learning-curve and alignment figures of the members (``plots.CurveSheets``,
        axes in common), built once for every member that plots at this point."""
        histories = [m.history for m in self.members.values() if m.history]
        key = sum(map(len, histories))
        if self._sheets is None or self._sheets[0] != key:
            self._sheets = (key, plots.CurveSheets(histories))
        return self._sheets[1]

    def _measure(self, epoch: int, train_loss: dict[str, float],
                 step_tests: dict[str, float]) -> dict[str, dict[str, float]]:
        """Test loss and error, and alignment, per member; a non-finite test loss fails."""
        tests = dict(zip(self.keys, self.evaluate(), strict=True))
        self._fail({key: DivergenceError(epoch, "the test loss")
                    for key, m in tests.items() if not math.isfinite(m["test_loss"])})
        if not self.keys:
            return {}
        aligned = alignment(self.net, self.rule, self.metrics_x, self.metrics_t)
        out = {}
        for key, align in zip(self.keys, aligned, strict=True):
            m: dict[str, float] = {"epoch": epoch, "train_loss": train_loss[key], **tests[key]}
            if self.config.step_test_images > 0:
                m["step_test_loss"] = step_tests[key]
            m.update(align)
            out[key] = m
        return out

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Per member: mean per-sample test loss, and test error for classification."""
        k = len(self.keys)
        loss_sum = torch.zeros(k, device=self.device, dtype=torch.float64)
        wrong = torch.zeros(k, device=self.device, dtype=torch.int64)
        chunk = 2000
        for start in range(0, self.n_test, chunk):
            x = self.data.x_test[start: start + chunk][: self.n_test - start]
            y = self.data.y_test[start: start + len(x)]
            out = self.net.predict(x)
            loss_sum += self.net.per_sample_loss(out, self._targets(x, y)).sum(-1)
            if self.experiment.classification:
                wrong += (out.argmax(-1) != y).sum(-1)
        losses = (loss_sum / self.n_test).tolist()
        errors = (wrong.double() / self.n_test).tolist()
        return [{"test_loss": losses[i],
                 **({"test_error": errors[i]} if self.experiment.classification else {})}
                for i in range(k)]

    def fit(self) -> dict[str, TrainResult]:
        """Run the epochs still to do; the results of the members that finished."""
        for key in self.keys:
            for cb in self.callbacks[key]:
                cb.on_fit_start(self.members[key])
        try:
            while self.epoch < self.config.epochs and self.keys:
                self.run_epoch()
        except BaseException as error:
            for key in self.keys:
                for cb in self.callbacks[key]:
                    cb.on_fit_error(self.members[key], error)
            raise
        results = {key: self.members[key].result() for key in self.keys}
        for key, result in results.items():
            for cb in self.callbacks[key]:
                cb.on_fit_end(self.members[key], result)
        return results

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "configs": {k: m.config.model_dump() for k, m in self.members.items()},
            "keys": list(self.keys), "failed": dict(self.failed),
            "stopped": list(self.stopped), "epoch": self.epoch, "elapsed": self.elapsed,
            "histories": {k: list(m.history) for k, m in self.members.items()},
            "net": self.net.state_dict(), "rule": self.rule.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "samplers": [s.state_dict() for s in self.samplers],
            "noise_gens": [g.get_state() for g in
                           (self.noise_gen if isinstance(self.noise_gen, list)
                            else [self.noise_gen])],
            "step_test_gens": [g.get_state() for g in self.step_test_gens],
            "callbacks": {k: {type(cb).__qualname__: s for cb in cbs
                              if (s := cb.state_dict()) is not None}
                          for k, cbs in self.callbacks.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"checkpoint version {state.get('version')} is not supported")
        ours = {k: m.config.model_dump(exclude={"device", "data_dir"})
                for k, m in self.members.items()}
        theirs = {k: {f: v for f, v in c.items() if f not in ("device", "data_dir")}
                  for k, c in state["configs"].items()}
        if ours != theirs:
            raise ConfigError("checkpoint was made with a different population")
        self.keep(state["keys"])
        self.failed = dict(state["failed"])
        self.stopped = list(state["stopped"])
        self.epoch, self.elapsed = state["epoch"], state["elapsed"]
        for k, history in state["histories"].items():
            self.members[k].history = list(history)
        self.net.load_state_dict(state["net"])
        self.rule.load_state_dict(state["rule"])
        self.optimizer.load_state_dict(state["optimizer"])
        for s, saved in zip(self.samplers, state["samplers"], strict=True):
            s.load_state_dict(saved)
        gens = self.noise_gen if isinstance(self.noise_gen, list) else [self.noise_gen]
        for g, saved in zip(gens + self.step_test_gens,
                            state["noise_gens"] + state["step_test_gens"], strict=True):
            g.set_state(saved)
        for k, saved in state["callbacks"].items():
            for cb in self.callbacks.get(k, ()):
                if type(cb).__qualname__ in saved:
                    cb.load_state_dict(saved[type(cb).__qualname__])
