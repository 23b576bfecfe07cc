"""``credit paper`` (the paper's experiments as campaigns) and ``credit report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from service import settings
from service.commands.options import UsageError, run_action


def _positive_floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or any(not (v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"noise levels must be > 0 (got {text!r})")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "paper", help="rerun one of the paper's experiments as a campaign of studies",
        description="For every rule the paper compares: a random search (--trials) and then "
        "--seeds runs of its best configuration, all grouped under one MLflow run, whose id "
        "is printed last. 'credit report ID' redraws the figures from it.",
        allow_abbrev=False,
    )
    add = p.add_argument
    add("experiment", choices=["mnist-fc", "mnist-autoencoder", "cifar10-cnn"])
    add("--protocol", choices=["ours", "authors", "fair"], default="ours",
        help="ours: each rule searched on the paper's network (default); authors: the "
        "authors' own fixed settings, networks, budget and metric, no search; fair "
        "(mnist-autoencoder): every rule searched on the same network, at widths 50 and 200")
    add("--trials", type=int, default=20, metavar="N", help="random-search trials per rule (20)")
    add("--seeds", type=int, default=5, metavar="K", help="seeds of each best configuration "
        "(5); with --protocol authors, runs per arm")
    add("--epochs", type=int, metavar="E", help="epochs per run (20; --protocol authors: "
        "each arm's own, e.g. 1,001 epochs of 1,000 batches)")
    add("--batches-per-epoch", type=int, metavar="N", help="batches per epoch (one pass)")
    add("--dataset", metavar="NAME", help="dataset (default: the experiment's)")
    add("--data-dir", metavar="DIR", help="data directory (default: $CREDIT_DATA_DIR)")
    add("--noise-levels", type=_positive_floats, metavar="C,C,...",
        help="mnist-fc: fixed noise levels c of the extra NP arms "
        "(default 1e-4,1e-3,1e-2,1e-1; '' for none)")
    add("--arms", type=lambda t: [k for k in t.replace(",", " ").split() if k],
        metavar="KEY,KEY,...", help="only these arms (np, fa, bp, adam, matched, "
        "dfa, np-c<level>; default: all of the experiment)")
    add("--concurrency", type=int, default=2, metavar="N", help="trials at once (2)")
    add("--sampler", default="random", metavar="NAME", help="random (the paper's), tpe, qmc, cmaes")
    add("--seed", type=int, default=0, metavar="N", help="sampler seed (0)")
    add("--name", metavar="NAME", help="campaign name (default: paper-<experiment>-<time>)")
    add("--tracking-uri", metavar="URI",
        help="MLflow tracking URI (default: sqlite in CREDIT_HOME)")
    add("--storage", metavar="URL",
        help="Optuna storage URL (default: sqlite in CREDIT_HOME)")
    add("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run_paper)

    r = subparsers.add_parser(
        "report", help="redraw the paper's figures from a campaign's or study's MLflow runs",
        allow_abbrev=False,
    )
    r.add_argument("run_id", metavar="ID", help="the campaign's or study's parent run id")
    r.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: sqlite in CREDIT_HOME)")
    r.add_argument("--out", metavar="DIR", help="output directory (default: ./report-<ID>)")
    r.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    r.set_defaults(func=run_report)


def run_paper(args: argparse.Namespace) -> int:
    """Check the campaign's flags, then run it (``actions.paper``)."""
    for flag_name, value, low in (("--trials", args.trials, 1),
                                  ("--seeds", args.seeds, 1 if args.protocol == "authors" else 0),
                                  ("--epochs", 1 if args.epochs is None else args.epochs, 1),
                                  ("--concurrency", args.concurrency, 1)):
        if value < low:
            raise UsageError(f"{flag_name}: must be >= {low} (got {value})")
    return run_action("paper:campaign", args)


def run_report(args: argparse.Namespace) -> int:
    """Check where the runs are, then draw the report (``actions.paper``)."""
    tracking_uri = args.tracking_uri or settings.default_tracking_uri()
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).exists():
        raise UsageError(f"--tracking-uri: no MLflow store at {tracking_uri[10:]}")
    return run_action("paper:report", args, tracking_uri)
