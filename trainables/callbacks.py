"""The trainer's hooks (minGPT's callbacks) and what they see, torch-free.

A callback — experiment tracking, a progress bar, Tune's report — subclasses
``Callback`` without importing the trainer: a process that only builds callbacks and
hands them on (a study's driver) imports no torch. The trainer, and each member of a
population, calls them with itself: a ``Training``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from trainables.config import TrainConfig
from trainables.experiments import Experiment
from trainables.numbers import finite_or_none


class Training(Protocol):
    """What a callback sees of the training it watches: a ``trainer.Trainer``, or one
    member of a population (``population.Member``)."""

    config: TrainConfig
    experiment: Experiment
    history: list[dict[str, float]]  # one dict of metrics per epoch done

    @property
    def epoch(self) -> int: ...

    def curve_sheets(self) -> Any:
        """The renderer of its learning-curve and alignment figures (``plots.CurveSheets``)."""

    def latent_codes(self, limit: int | None = None) -> tuple[Any, Any]:
        """An autoencoder's codes of the test set and their labels (numpy arrays)."""

    def reconstructions(self, n: int = 8) -> tuple[Any, Any]:
        """An autoencoder's first ``n`` test images and their reconstructions (numpy)."""


@dataclass
class TrainResult:
    config: dict[str, Any]
    history: list[dict[str, float]]
    final: dict[str, float]

    def to_json(self, path: str | os.PathLike) -> None:
        """Strict JSON: a metric that is NaN (e.g. an angle of zero vectors) is written null."""
        Path(path).write_text(json.dumps(finite_or_none(asdict(self)), indent=2) + "\n")


class Callback:
    """Hooks called by the trainer; override the ones you need."""

    def on_fit_start(self, trainer: Training) -> None: ...

    def on_batch_end(self, trainer: Training, batch: int, n_batches: int) -> None: ...

    def on_epoch_end(self, trainer: Training, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Training, result: TrainResult) -> None: ...

    def on_fit_error(self, trainer: Training, error: BaseException) -> None:
        """Training stopped with ``error`` (e.g. ``DivergenceError``); it is re-raised after."""

    def state_dict(self) -> dict | None:
        """State to keep in the trainer's checkpoint (e.g. a tracking run id), or None."""
        return None

    def load_state_dict(self, state: dict) -> None: ...
