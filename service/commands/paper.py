"""``credit paper`` (the paper's experiments as campaigns) and ``credit report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.commands import UsageError


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
    from pydantic import ValidationError

    from service.commands import validation_message
    from service.paper import run_campaign

    for flag_name, value, low in (("--trials", args.trials, 1),
                                  ("--seeds", args.seeds, 1 if args.protocol == "authors" else 0),
                                  ("--epochs", 1 if args.epochs is None else args.epochs, 1),
                                  ("--concurrency", args.concurrency, 1)):
        if value < low:
            raise UsageError(f"{flag_name}: must be >= {low} (got {value})")
    last = {"line": ""}

    def progress(label: str, state: dict) -> None:
        if args.quiet or "counts" not in state:
            return
        c = state["counts"]
        best = "-" if state.get("best") is None else f"{state['best']:.4g}"
        line = (f"{label}: {c['complete'] + c['failed'] + c['pruned']}/{state['max_trials']} "
                f"trials · best {state['metric']} {best}")
        if line != last["line"]:
            print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)
            last["line"] = line

    try:
        result = run_campaign(
            args.experiment, trials=args.trials, seeds=args.seeds, epochs=args.epochs,
            dataset=args.dataset, data_dir=args.data_dir,
            batches_per_epoch=args.batches_per_epoch,
            noise_levels=args.noise_levels, only=args.arms, parallel_trials=args.concurrency,
            sampler=args.sampler, seed=args.seed, tracking_uri=args.tracking_uri,
            storage=args.storage, name=args.name, protocol=args.protocol, progress=progress,
        )
    except ValidationError as e:
        raise UsageError(validation_message(e)) from None
    finally:
        if last["line"]:
            print(file=sys.stderr)
    from service.report import build_report, format_table

    report = build_report(result.run_id, result.tracking_uri, out_dir=None)
    print(format_table(report.table))
    failed = [k for k, v in result.studies.items() if isinstance(v, Exception)]
    if failed:
        print(f"failed arms: {', '.join(failed)}", file=sys.stderr)
    print(f"wall time {result.wall_time_s:.0f} s; report: {report.html}")
    print(f"campaign run id: {result.run_id}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from service import settings
    from service.report import ReportError, build_report, format_table

    tracking_uri = args.tracking_uri or settings.default_tracking_uri()
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).exists():
        raise UsageError(f"--tracking-uri: no MLflow store at {tracking_uri[10:]}")
    out = Path(args.out) if args.out else Path(f"report-{args.run_id}")
    try:
        report = build_report(args.run_id, tracking_uri, out, log_to_mlflow=not args.no_log)
    except ReportError as e:
        raise UsageError(str(e)) from None
    print(format_table(report.table))
    for name, path in report.figures.items():
        print(f"{name}: {path}")
    print(f"report: {report.html}")
    return 0
