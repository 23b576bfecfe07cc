"""The Ray Tune trainable: a thin adapter around ``Trainer`` (setup, step, checkpoint).

Imported only where Ray runs; the rest of ``trainables`` never imports Ray. The
trial's config dict is a ``TrainConfig``; per-epoch metrics go to ``ray.tune.report``
with a checkpoint of everything, so a restored trial continues bit-identically.
Extra trainer callbacks (e.g. experiment tracking) come from ``callback_factory``,
which keeps this module free of any tracking library.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from trainables.config import TrainConfig
from trainables.experiments import EXPERIMENTS
from trainables.trainer import Callback, Trainer

CHECKPOINT_FILE = "trainer.pt"
CallbackFactory = Callable[[TrainConfig, str], Sequence[Callback]]
#: What a trial that raised reports instead: its last result (a dict), or None to raise
#: (Tune then restarts the trial from its last checkpoint, while it has restarts left).
ErrorHandler = Callable[[BaseException, int], dict[str, Any] | None]


class ReportToTune(Callback):
    """Reports each epoch's metrics to Tune together with a full checkpoint.

    It must be the LAST callback: Tune may stop the trial inside ``report`` (ASHA),
    so everything else of the epoch has to be done by then.
    """

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory(prefix="credit-ckpt-") as tmp:
            trainer.save_checkpoint(Path(tmp) / CHECKPOINT_FILE)
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_threads(config: TrainConfig, cpus: float) -> int:
    """One intra-op thread per CPU the trial holds (at most what the model can use)."""
    return max(1, min(int(cpus), EXPERIMENTS.get(config.experiment).threads))


def train_trial(config: dict[str, Any], callback_factory: CallbackFactory | None = None,
                on_error: ErrorHandler | None = None) -> None:
    """Ray Tune function trainable: train ``config`` and report every epoch.

    An exception ends the trial. Without ``on_error`` it is raised: Tune marks the trial
    errored (and restarts it if its failure config allows). ``on_error(error, epochs
    done)`` decides instead: a dict is reported as the trial's last result and the trial
    ends there (a failure of the trial itself, e.g. divergence: never retried), None
    raises (an infrastructure failure: Tune restarts the trial from its checkpoint).
    """
    from ray import tune

    trainer = None
    try:
        context = tune.get_context()
        cfg = TrainConfig(**config)
        cpus = context.get_trial_resources().required_resources.get("CPU", 1)
        torch.set_num_threads(trial_threads(cfg, cpus))
        extra = list(callback_factory(cfg, context.get_trial_id())) if callback_factory else []
        trainer = Trainer(cfg, callbacks=[*extra, ReportToTune()])
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                trainer.load_checkpoint(Path(directory) / CHECKPOINT_FILE)
        trainer.fit()
    except Exception as error:
        last = None if on_error is None else on_error(error, 0 if trainer is None
                                                      else trainer.epoch)
        if last is None:
            raise
        tune.report(last)
