"""``credit train`` (one run of one configuration) and the catalogues of what it accepts.

``credit train`` builds a ``TrainConfig`` from the flags the user gave (every flag is
the config field of the same name; defaults are the config's own), trains it with a
progress bar on stderr, prints an end-of-run table on stdout and can write the
result as JSON. ``credit rules|experiments|datasets`` list the valid names.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from service.commands import UsageError, field_option, flag, validation_message

__all__ = ["config_fields", "format_summary", "make_config", "register"]

#: Columns of the per-layer table: metric prefix → (header, format).
_LAYER_METRICS = {
    "angle": ("angle (°)", "{:.2f}"),
    "relative_error": ("relative error", "{:.4f}"),
    "sign_congruence": ("sign congruence (%)", "{:.1f}"),
    "update_angle": ("update angle (°)", "{:.2f}"),
}


# --------------------------------------------------------------------------- parsers


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``rules``, ``experiments`` and ``datasets``."""
    train = subparsers.add_parser(
        "train",
        help="train one configuration and report its metrics",
        description="Train one configuration. Every option is the TrainConfig field of the "
        "same name; options not given take TrainConfig's defaults.",
        allow_abbrev=False,
        deferred=[_add_config_options],
    )
    output = train.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="write the result (config, history, "
                        "final metrics) as JSON to FILE")
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    output.add_argument("--threads", type=int, metavar="N", help="intra-op CPU threads "
                        "(default: 1 for the MLPs, whose steps are too small to split; "
                        "all cores for the CNN)")
    train.set_defaults(func=run_train)

    for name, func, text in (
        ("rules", list_rules, "list the learning rules"),
        ("experiments", list_experiments, "list the experiments (networks) and their datasets"),
        ("datasets", list_datasets, "list the datasets"),
    ):
        sub = subparsers.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.set_defaults(func=func)


def config_fields() -> dict[str, Any]:
    """``TrainConfig``'s fields: each is a ``credit train`` flag (see ``field_option``)."""
    from trainables.config import TrainConfig

    return TrainConfig.model_fields


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (added when ``credit train`` is parsed or its help
    shown: TrainConfig imports torch, which ``credit --help`` should not wait for)."""
    config = parser.add_argument_group("configuration")
    for name, info in config_fields().items():
        config.add_argument(flag(name), **field_option(name, info))


# --------------------------------------------------------------------------- train


def make_config(options: Mapping[str, Any]):
    """The ``TrainConfig`` of the given options; a bad value is a one-line ``UsageError``."""
    from pydantic import ValidationError

    from trainables.config import TrainConfig

    try:
        return TrainConfig(**options)
    except ValidationError as e:
        raise UsageError(validation_message(e)) from None


def _progress_bar(every: int = 10):
    """A trainer callback drawing one tqdm bar (stderr) over all batches of the run."""
    from tqdm import tqdm

    from trainables.trainer import Callback

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


def run_train(args: argparse.Namespace) -> int:
    """Train the configuration the flags describe; print the table, write the JSON."""
    start = time.perf_counter()
    config = make_config({f: getattr(args, f) for f in config_fields() if hasattr(args, f)})
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.resolve().parent.is_dir():
        raise UsageError(f"--json: directory {json_path.resolve().parent} does not exist")

    import torch

    from trainables.experiments import EXPERIMENTS
    from trainables.trainer import Trainer

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


def _number(value: float, fmt: str = "{:.4g}") -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


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
        text = _number(final["test_loss"])
        if "best_test_loss" in final:
            text += f"  (best {_number(final['best_test_loss'])})"
        rows.append(("test loss", text))
    shown = {"test_error", "best_test_error", "test_loss", "best_test_loss", "epochs", "time_s"}
    for key, value in final.items():
        if "/" not in key and key not in shown:
            rows.append((key.replace("_", " "), _number(value)))
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
                fmt = _LAYER_METRICS.get(m, ("", "{:.4g}"))[1]
                row.append(_number(per_layer[m][name], fmt) if name in per_layer[m] else "-")
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


# --------------------------------------------------------------------------- catalogues


def list_rules(args: argparse.Namespace) -> int:
    """Print every learning rule with its one-line description."""
    from service.commands.listing import print_table
    from trainables.catalog import rule_descriptions

    print_table(list(rule_descriptions().items()))
    return 0


def list_experiments(args: argparse.Namespace) -> int:
    """Print every experiment with its description, datasets and default dataset."""
    from service.commands.listing import print_table
    from trainables.experiments import EXPERIMENTS

    print_table([
        (name, f"{exp.description}; datasets: {', '.join(exp.datasets)} "
               f"(default: {exp.default_dataset})")
        for name, exp in EXPERIMENTS.items()
    ])
    return 0


def list_datasets(args: argparse.Namespace) -> int:
    """Print every dataset with its description and the experiments that use it."""
    from service.commands.listing import print_table
    from trainables.catalog import dataset_descriptions
    from trainables.experiments import EXPERIMENTS

    rows = []
    for name, text in dataset_descriptions().items():
        users = [e for e, exp in EXPERIMENTS.items() if name in exp.datasets]
        rows.append((name, f"{text.rstrip('.')}; experiments: {', '.join(users) or '-'}"))
    print_table(rows)
    return 0
