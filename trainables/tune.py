"""The Ray Tune trainable: a thin adapter around ``Trainer`` (setup, step, checkpoint).

Imported only in the processes that run trials: a study's driver names these
functions (``"trainables.tune:train_trial"``) and never imports this module, nor torch;
what it reads of a trial's report is in ``trainables.trial_reports``. The rest of
``trainables`` never imports Ray. The trial's config dict is a ``TrainConfig``;
per-epoch metrics go to ``ray.tune.report``, with a checkpoint of everything when one is
due (``CheckpointPace``), so a restored trial continues bit-identically. Extra trainer
callbacks (e.g. experiment tracking) come from ``callback_factory``, which keeps this
module free of any tracking library.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainables.callbacks import Callback
from trainables.config import TrainConfig
from trainables.errors import DeviceUnavailableError
from trainables.experiments import EXPERIMENTS
from trainables.population import PopulationTrainer, shared_fields
from trainables.trainer import Trainer
from trainables.trial_reports import MEMBERS_KEY, POPULATION_KEY

CHECKPOINT_FILE = "trainer.pt"
#: A trial checkpoints its first epoch, its last, and any other once this many seconds
#: have passed since its last checkpoint. Tune deletes a trial's checkpoints beyond the
#: newest ``service.runner.tuner.CHECKPOINTS_KEPT`` as it gets them, while the experiment
#: state a restore reads is uploaded every few seconds: a trial checkpointing each of
#: its sub-second epochs had deleted the checkpoint that state named before it was uploaded,
#: and the study could not resume. Paced, that state must be (CHECKPOINTS_KEPT - 1)
#: periods (20 s) stale for it.
CHECKPOINT_PERIOD_S = 5.0
CallbackFactory = Callable[[TrainConfig, str], Sequence[Callback]]
#: What a trial that raised reports instead: its last result (a dict), or None to raise
#: (Tune then restarts the trial from its last checkpoint, while it has restarts left).
ErrorHandler = Callable[[BaseException, int], dict[str, Any] | None]


class TuneSession:
    """What a trainable asks of Ray Tune: its trial's id and CPUs, the checkpoint it
    starts from, where each epoch's report goes. A fork of a node's warm trainer
    (``service.runner.warm``) trains for a Tune trial in another process: it puts a
    session that relays these to that trial in place (``use_session``)."""

    def trial_id(self) -> str:
        from ray import tune

        return tune.get_context().get_trial_id()

    def cpus(self) -> float:
        from ray import tune

        return tune.get_context().get_trial_resources().required_resources.get("CPU", 1)

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        """The folder of the checkpoint to start from, or None (a new trial)."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, Any], directory: Path | None = None) -> None:
        """Report ``metrics``, with the checkpoint in ``directory`` (copied before this
        returns: the caller may delete it then)."""
        from ray import tune

        tune.report(metrics, checkpoint=None if directory is None
                    else tune.Checkpoint.from_directory(str(directory)))


_SESSION: list[TuneSession] = [TuneSession()]


def session() -> TuneSession:
    return _SESSION[0]


def use_session(replacement: TuneSession) -> None:
    """Trainables report to ``replacement`` from now on (in this process)."""
    _SESSION[0] = replacement


class CheckpointPace:
    """Which epochs a trial checkpoints: its first (of this attempt), its last, and any
    other ``period_s`` or more after its last checkpoint (``CHECKPOINT_PERIOD_S``)."""

    def __init__(self, period_s: float = CHECKPOINT_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic):
        self.period_s, self.clock = period_s, clock
        self.last: float | None = None

    def due(self, last: bool) -> bool:
        """Whether this epoch (``last``: the trial's final one) gets a checkpoint."""
        now = self.clock()
        if self.last is None or last or now - self.last >= self.period_s:
            self.last = now
            return True
        return False

    def report(self, metrics: dict[str, Any], last: bool,
               save: Callable[[Path], None]) -> None:
        """Report an epoch's ``metrics``, with the checkpoint ``save(folder)`` writes when
        one is due."""
        if not self.due(last):
            session().report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="credit-ckpt-") as tmp:
            save(Path(tmp))
            session().report(metrics, Path(tmp))


class ReportToTune(Callback):
    """Reports each epoch's metrics to Tune, with a full checkpoint when one is due
    (``CheckpointPace``).

    It must be the LAST callback: Tune may stop the trial inside ``report`` (ASHA),
    so everything else of the epoch has to be done by then.
    """

    def __init__(self) -> None:
        self.pace = CheckpointPace()

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.pace.report(dict(metrics), trainer.epoch >= trainer.config.epochs,
                         lambda folder: trainer.save_checkpoint(folder / CHECKPOINT_FILE))


def trial_threads(config: TrainConfig, cpus: float) -> int:
    """One intra-op thread per CPU the trial holds (at most what the model can use)."""
    return max(1, min(int(cpus), EXPERIMENTS.get(config.experiment).threads))


def check_device(config: TrainConfig) -> None:
    """A trial Ray placed with a GPU must see one: else ``DeviceUnavailableError`` naming
    the node (an infrastructure failure: the node's drivers or torch build are wrong)."""
    if not config.device.startswith("cuda") or torch.cuda.is_available():
        return
    import ray

    raise DeviceUnavailableError(
        f"node {ray.util.get_node_ip_address()} ({os.uname().nodename}) was given GPU "
        f"{ray.get_gpu_ids() or '?'} by Ray but torch {torch.__version__} sees no CUDA "
        f"device there (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")


def train_trial(config: dict[str, Any], callback_factory: CallbackFactory | None = None,
                on_error: ErrorHandler | None = None) -> None:
    """Ray Tune function trainable: train ``config`` and report every epoch.

    An exception ends the trial. Without ``on_error`` it is raised: Tune marks the trial
    errored (and restarts it if its failure config allows). ``on_error(error, epochs
    done)`` decides instead: a dict is reported as the trial's last result and the trial
    ends there (a failure of the trial itself, e.g. divergence: never retried), None
    raises (an infrastructure failure: Tune restarts the trial from its checkpoint).
    """
    trainer = None
    try:
        cfg = TrainConfig(**config)
        check_device(cfg)
        torch.set_num_threads(trial_threads(cfg, session().cpus()))
        extra = list(callback_factory(cfg, session().trial_id())) if callback_factory else []
        trainer = Trainer(cfg, callbacks=[*extra, ReportToTune()])
        with session().restored() as directory:
            if directory is not None:
                trainer.load_checkpoint(directory / CHECKPOINT_FILE)
        trainer.fit()
    except Exception as error:
        last = None if on_error is None else on_error(error, 0 if trainer is None
                                                      else trainer.epoch)
        if last is None:
            raise
        session().report(last)


# ------------------------------------------------------------------ populations
POPULATION_FILE = "population.pt"


class Populations:
    """The groups of a population trial: members sharing all but ``MEMBER_FIELDS`` train
    as one stacked ``PopulationTrainer`` each, epoch by epoch side by side."""

    def __init__(self, config: dict[str, Any], metric: str, mode: str,
                 callback_factory: CallbackFactory | None):
        base = {k: v for k, v in config.items() if k != POPULATION_KEY}
        self.metric, self.mode = metric, mode
        configs = {m["key"]: TrainConfig(**{**base, **m["params"]})
                   for m in config[POPULATION_KEY]}
        groups: dict[str, list[str]] = {}
        for key, cfg in configs.items():
            groups.setdefault(json.dumps(shared_fields([cfg]), sort_keys=True), []).append(key)
        self.order = list(configs)
        self.groups = [PopulationTrainer(
            [configs[k] for k in keys], keys,
            {k: list(callback_factory(configs[k], k)) if callback_factory else []
             for k in keys}) for keys in groups.values()]
        self.epochs = base.get("epochs") or next(iter(configs.values())).epochs

    @property
    def epoch(self) -> int:
        return max(g.epoch for g in self.groups)

    def run_epoch(self) -> None:
        for group in self.groups:
            if group.keys and group.epoch < group.config.epochs:
                group.run_epoch()

    def halve(self, grace_period: int, reduction_factor: int) -> None:
        """Successive halving over the members (ASHA's rungs: epochs grace·rfⁱ): at a rung,
        the members outside the best 1/rf stop (PRUNED); the population goes on."""
        epoch, rung = self.epoch, grace_period
        while rung < epoch:
            rung *= reduction_factor
        if rung != epoch or epoch >= self.epochs:
            return
        alive = [(g, k) for g in self.groups for k in g.keys]
        sign = 1.0 if self.mode == "min" else -1.0

        def score(item):
            value = item[0].members[item[1]].history[-1].get(self.metric, math.nan)
            return math.inf if not math.isfinite(value) else sign * value

        ranked = sorted(alive, key=score)
        for group, key in ranked[math.ceil(len(alive) / reduction_factor):]:
            group.stop([key])

    def report(self) -> dict[str, Any]:
        """The population's report: each member's state, and the best alive value."""
        members, best = {}, None
        for g in self.groups:
            for key in self.order:
                if key not in g.members:
                    continue
                m = g.members[key]
                value = m.history[-1].get(self.metric) if m.history else None
                if key in g.failed:
                    state, value = "FAILED", None
                elif key in g.stopped:
                    state, value = "PRUNED", None
                elif m.epoch >= m.config.epochs:
                    state = "COMPLETE"
                else:
                    state = "RUNNING"
                members[key] = {"state": state, "value": value, "epoch": m.epoch,
                                "error": g.failed.get(key),
                                # its last metrics, once it completed (every objective)
                                "metrics": m.history[-1] if state == "COMPLETE" else None}
                if value is not None and math.isfinite(value) and state != "PRUNED" and (
                        best is None or (value < best if self.mode == "min" else value > best)):
                    best = value
        return {"epoch": self.epoch, self.metric: math.nan if best is None else best,
                "population_size": sum(len(g.keys) for g in self.groups),
                MEMBERS_KEY: json.dumps(members)}

    def fail_all(self, reason: str) -> dict[str, Any]:
        """The report of a population that failed as a whole: every running member FAILED."""
        for g in self.groups:
            for key in g.keys:
                g.failed[key] = reason
        return self.report()

    def state_dict(self) -> list[dict[str, Any]]:
        return [g.state_dict() for g in self.groups]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for g, state in zip(self.groups, states, strict=True):
            g.load_state_dict(state)


def train_population(config: dict[str, Any], metric: str, mode: str,
                     callback_factory: CallbackFactory | None = None,
                     on_error: ErrorHandler | None = None,
                     halving: tuple[int, int] | None = None) -> None:
    """Ray Tune function trainable of a population (``config[POPULATION_KEY]`` lists its
    members): every epoch one report with each member's state, and a checkpoint of all
    when one is due (``CheckpointPace``; also when no member is left to train).

    A member that diverges fails alone; ``halving`` = (grace period, reduction factor)
    stops the weaker members at each rung. An exception of the population as a whole is
    ``train_trial``'s: ``on_error`` decides between its last report and a restart.
    """
    pop = None
    try:
        check_device(TrainConfig(**{k: v for k, v in config.items() if k != POPULATION_KEY}))
        pop = Populations(config, metric, mode, callback_factory)
        torch.set_num_threads(trial_threads(pop.groups[0].config, session().cpus()))
        with session().restored() as directory:
            if directory is not None:
                pop.load_state_dict(torch.load(directory / POPULATION_FILE,
                                               weights_only=False))
        for g in pop.groups:
            for key in g.keys:
                for cb in g.callbacks[key]:
                    cb.on_fit_start(g.members[key])
        pace = CheckpointPace()
        while pop.epoch < pop.epochs and any(g.keys for g in pop.groups):
            pop.run_epoch()
            if halving is not None:
                pop.halve(*halving)
            pace.report(pop.report(),
                        pop.epoch >= pop.epochs or not any(g.keys for g in pop.groups),
                        lambda folder: torch.save(pop.state_dict(), folder / POPULATION_FILE))
    except Exception as error:
        last = None if on_error is None else on_error(error, 0 if pop is None else pop.epoch)
        if last is None or pop is None:
            raise
        for g in pop.groups:
            for key in g.keys:
                for cb in g.callbacks[key]:
                    cb.on_fit_error(g.members[key], error)
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        session().report({**last, **pop.fail_all(reason)})
