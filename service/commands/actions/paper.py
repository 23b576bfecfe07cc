"""``credit paper`` and ``credit report``'s work: a campaign of the paper's experiments,
and its figures redrawn from MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from service.commands.options import UsageError, validation_message
from service.paper.campaign import run_campaign
from service.paper.report import ReportError, build_report, format_table


def campaign(args: argparse.Namespace) -> int:
    """Run every arm of the campaign with a live line per arm; print its report."""
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
    report = build_report(result.run_id, result.tracking_uri, out_dir=None)
    print(format_table(report.table))
    failed = [k for k, v in result.studies.items() if isinstance(v, Exception)]
    if failed:
        print(f"failed arms: {', '.join(failed)}", file=sys.stderr)
    print(f"wall time {result.wall_time_s:.0f} s; report: {report.html}")
    print(f"campaign run id: {result.run_id}")
    return 0


def report(args: argparse.Namespace, tracking_uri: str) -> int:
    """Draw the report of ``args.run_id`` from the runs at ``tracking_uri``."""
    out = Path(args.out) if args.out else Path(f"report-{args.run_id}")
    try:
        drawn = build_report(args.run_id, tracking_uri, out, log_to_mlflow=not args.no_log)
    except ReportError as e:
        raise UsageError(str(e)) from None
    print(format_table(drawn.table))
    for name, path in drawn.figures.items():
        print(f"{name}: {path}")
    print(f"report: {drawn.html}")
    return 0
