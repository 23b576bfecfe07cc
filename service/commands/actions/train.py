"""``credit train``'s work: the training run itself, with a progress bar (stderr)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from service.text import number
from trainables.config import TrainConfig
from trainables.experiments import EXPERIMENTS
from trainables.trainer import Callback, Trainer

#: Columns of the per-layer table: metric prefix → (header, format).
_LAYER_METRICS = {
    "angle": ("angle (°)", ".2f"),
    "relative_error": ("relative error", ".4f"),
    "sign_congruence": ("sign congruence (%)", ".1f"),
    "update_angle": ("update angle (°)", ".2f"),
}


def _progress_bar(every: int = 10):
    """A trainer callback drawing one tqdm bar (stderr) over all batches of the run."""
    class ProgressBar(Callback):
        def __init__(self) -> None:
            self.bar: tqdm | None = None
            self.pending = 0

        def on_fit_start(self, trainer) -> None:
            remaining = trainer.config.epochs - trainer.epoch
            self.bar = tqdm(
                total=remaining * trainer.batches_per_epoch, unit="batch", file=sys.stderr,
                dynamic_ncols=True, desc=trainer.config.rule,
            )

        def on_batch_end(self, trainer, batch: int, n_batches: int) -> None:
            self.pending += 1
            if self.pending >= every or batch + 1 == n_batches:
                self.bar.update(self.pending)
                self.pending = 0

        def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
            postfix = {"epoch": int(metrics["epoch"])}
            if "test_error" in metrics:
                postfix["test_error"] = f"{100 * metrics['test_error']:.2f}%"
            postfix["test_loss"] = f"{metrics['test_loss']:.4g}"
            self.bar.set_postfix(postfix)

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressBar()


def train(args: argparse.Namespace, config: TrainConfig, json_path: Path | None,
          start: float) -> int:
    """Train ``config`` with a progress bar; print the table, write the JSON."""
    torch.set_num_threads(args.threads or EXPERIMENTS.get(config.experiment).threads)
    progress = None if args.quiet else _progress_bar()
    trainer = Trainer(config, callbacks=[progress] if progress else [])
    try:
        result = trainer.fit()
    finally:
        if progress is not None:
            progress.close()
    if json_path is not None:
        result.to_json(json_path)
    layers = [layer.name for layer in trainer.net.layers]
    print(format_summary(result.config, result.final, layers, time.perf_counter() - start))
    return 0


def format_summary(
    config: Mapping[str, Any], final: Mapping[str, float], layers: Sequence[str], wall_s: float
) -> str:
    """The end-of-run table: overall metrics, then per-layer alignment, then the times."""
    epochs = final.get("epochs", config["epochs"])
    lines = [
        f"{config['experiment']} · {config['rule']} on {config['dataset']} · "
        f"{epochs} epoch{'' if epochs == 1 else 's'} · seed {config['seed']}",
        "",
    ]
    rows: list[tuple[str, str]] = []
    if "test_error" in final:
        text = f"{100 * final['test_error']:.2f} %"
        if "best_test_error" in final:
            text += f"  (best {100 * final['best_test_error']:.2f} %)"
        rows.append(("test error", text))
    if "test_loss" in final:
        text = number(final["test_loss"], missing=None)
        if "best_test_loss" in final:
            text += f"  (best {number(final['best_test_loss'], missing=None)})"
        rows.append(("test loss", text))
    shown = {"test_error", "best_test_error", "test_loss", "best_test_loss", "epochs", "time_s"}
    for key, value in final.items():
        if "/" not in key and key not in shown:
            rows.append((key.replace("_", " "), number(value, missing=None)))
    width = max(len(label) for label, _ in rows) if rows else 0
    lines += [f"{label:<{width}}  {text}" for label, text in rows]

    per_layer: dict[str, dict[str, float]] = {}
    for key, value in final.items():
        if "/" in key:
            metric, layer = key.split("/", 1)
            per_layer.setdefault(metric, {})[layer] = value
    if per_layer:
        metrics = [m for m in _LAYER_METRICS if m in per_layer]
        metrics += [m for m in per_layer if m not in _LAYER_METRICS]
        names = [name for name in layers if any(name in per_layer[m] for m in metrics)]
        names += sorted({n for m in metrics for n in per_layer[m]} - set(names))
        header = ["layer"] + [_LAYER_METRICS.get(m, (m, ""))[0] for m in metrics]
        table = [header]
        for name in names:
            row = [name]
            for m in metrics:
                fmt = _LAYER_METRICS.get(m, ("", ".4g"))[1]
                row.append(number(per_layer[m][name], fmt, missing=None)
                           if name in per_layer[m] else "-")
            table.append(row)
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append("")
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())

    lines.append("")
    timing = f"wall time {wall_s:.1f} s"
    if "time_s" in final:
        timing += f" (training {final['time_s']:.1f} s)"
    lines.append(timing)
    return "\n".join(lines)
