"""``credit train`` (one run of one configuration) and the catalogues of what it accepts.

``credit train`` builds a ``TrainConfig`` from the flags the user gave (every flag is
the config field of the same name; defaults are the config's own), trains it with a
progress bar on stderr, prints an end-of-run table on stdout and can write the
result as JSON. ``credit rules|experiments|datasets`` list the valid names.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.commands.listing import print_table
from service.commands.options import (
    UsageError,
    field_option,
    flag,
    run_action,
    validation_message,
)
from trainables.catalog import dataset_descriptions, rule_descriptions
from trainables.config import TrainConfig
from trainables.experiments import EXPERIMENTS

__all__ = ["config_fields", "make_config", "register"]

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
    try:
        return TrainConfig(**options)
    except ValidationError as e:
        raise UsageError(validation_message(e)) from None


def run_train(args: argparse.Namespace) -> int:
    """Check the configuration the flags describe, then train it (``actions.train``)."""
    start = time.perf_counter()
    config = make_config({f: getattr(args, f) for f in config_fields() if hasattr(args, f)})
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.resolve().parent.is_dir():
        raise UsageError(f"--json: directory {json_path.resolve().parent} does not exist")
    return run_action("train:train", args, config, json_path, start)


# --------------------------------------------------------------------------- catalogues


def list_rules(args: argparse.Namespace) -> int:
    """Print every learning rule with its one-line description."""

    print_table(list(rule_descriptions().items()))
    return 0


def list_experiments(args: argparse.Namespace) -> int:
    """Print every experiment with its description, datasets and default dataset."""

    print_table([
        (name, f"{exp.description}; datasets: {', '.join(exp.datasets)} "
               f"(default: {exp.default_dataset})")
        for name, exp in EXPERIMENTS.items()
    ])
    return 0


def list_datasets(args: argparse.Namespace) -> int:
    """Print every dataset with its description and the experiments that use it."""

    rows = []
    for name, text in dataset_descriptions().items():
        users = [e for e, exp in EXPERIMENTS.items() if name in exp.datasets]
        rows.append((name, f"{text.rstrip('.')}; experiments: {', '.join(users) or '-'}"))
    print_table(rows)
    return 0
