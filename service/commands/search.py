"""``credit search``: run or resume a study."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from service.commands import (
    UsageError,
    add_study_options,
    study_fields,
    study_flag,
    validation_message,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="run a hyperparameter study on Ray Tune with Optuna and MLflow",
        description="Run (or resume) a study: Optuna picks configurations of the search "
        "space, Ray Tune runs them as trials, every trial is an MLflow run.",
        allow_abbrev=False,
    )
    p.add_argument("--space", required=True, metavar="NAME|FILE",
                   help="a preset (see 'credit spaces') or a search-space JSON file")
    add_study_options(p, extra=_SERVER_SIDE)
    p.add_argument("--storage-path", metavar="PATH|URI",
                   help="Tune checkpoints: a path every node mounts, or s3://bucket/prefix "
                   "(default: $CREDIT_STORAGE, else CREDIT_HOME/ray_results)")
    p.add_argument("--resume", action="store_true", help="resume the study --name")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run_search)


#: StudySpec fields the API's server owns, which ``credit search`` (its own server) sets.
_SERVER_SIDE = ("data_dir", "tracking_uri", "storage")


def make_spec(args: argparse.Namespace):
    from pydantic import ValidationError

    from service.spec import StudySpec

    fields = study_fields(args, {"space": args.space}, extra=_SERVER_SIDE)
    if "name" not in fields:
        if args.resume:
            raise UsageError("--resume needs --name of the study to resume")
        stem = Path(args.space).stem if args.space.endswith(".json") else args.space
        fields["name"] = f"{stem[:40]}-{time.strftime('%Y%m%d-%H%M%S')}".lower()
    try:
        return StudySpec(**fields)
    except ValidationError as e:
        raise UsageError(validation_message(e, study_flag)) from None


class _Progress:
    """One live status line on stderr: trials done/running/failed/pruned, best so far."""

    def __init__(self, quiet: bool, header: str = ""):
        self.quiet = quiet
        self.header = header  # printed once the study has passed its checks
        self.last = ""

    def __call__(self, state: dict[str, Any]) -> None:
        if self.quiet:
            return
        if self.header:
            print(self.header, file=sys.stderr)
            self.header = ""
        c = state["counts"]
        best = "-" if state["best"] is None else f"{state['best']:.4g}"
        line = (f"trials {c['complete'] + c['failed'] + c['pruned']}/{state['max_trials']}: "
                f"{c['complete']} complete, {c['running']} running, {c['failed']} failed, "
                f"{c['pruned']} pruned · best {state['metric']} {best}")
        if line != self.last:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
            self.last = line

    def close(self) -> None:
        if self.last and not self.quiet:
            print(file=sys.stderr)


def run_search(args: argparse.Namespace) -> int:
    from service.spec import StudyError

    spec = make_spec(args)  # bad input answers before the heavy imports below
    from service.study import run_study
    from trainables.metrics import finite_or_none

    if args.storage_path:
        from service.storage import STORAGE_ENV, tune_storage

        os.environ[STORAGE_ENV] = args.storage_path
        tune_storage()  # a malformed setting: exit 2 now
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UsageError(f"--json: directory {Path(args.json).resolve().parent} does not exist")
    progress = _Progress(args.quiet, f"study {spec.name}: space {spec.search_space().name}, "
                         f"{spec.max_trials} trials, sampler {spec.sampler}, objective "
                         f"{spec.objective.mode} {spec.objective.metric}")
    try:
        result = run_study(spec, resume=args.resume, progress=progress)
    except StudyError as e:
        raise UsageError(str(e)) from None
    finally:
        progress.close()
    if args.json:
        Path(args.json).write_text(json.dumps(finite_or_none(result.to_dict()), indent=2) + "\n")
    print(format_result(result))
    return 0 if result.status == "SUCCEEDED" else 1


def format_result(result) -> str:
    c = result.counts
    lines = [f"study {result.name}: {result.status}"
             + (f" ({result.message})" if result.message else ""),
             f"trials: {c.get('complete', 0)} complete, {c.get('failed', 0)} failed, "
             f"{c.get('pruned', 0)} pruned · {result.wall_time_s:.1f} s", ""]
    if result.best_params is None:
        lines.append("no best configuration: no trial completed")
    else:
        obj = result.objective
        lines.append(f"best {obj['metric']} ({obj['mode']}): {result.best_value:.6g}")
        width = max(len(k) for k in result.best_params)
        for k, v in sorted(result.best_params.items()):
            lines.append(f"  {k:<{width}}  {v:.6g}" if isinstance(v, float)
                         else f"  {k:<{width}}  {v}")
        lines.append(f"MLflow run of the best trial: {result.best_run_id}")
    if result.final:
        n = int(result.final.get("final_seeds", 0))
        lines.append(f"final evaluation over {n} seeds (mean ± standard error):")
        for key in sorted(k for k in result.final if k.endswith("_mean")):
            base = key[len("final/"):-len("_mean")]
            sem = result.final.get(f"final/{base}_sem", 0.0)
            lines.append(f"  {base:<24} {result.final[key]:.6g} ± {sem:.2g}")
    failed = [t for t in result.trials if t.state == "FAILED"]
    if failed:
        lines.append(f"failed trials ({len(failed)}):")
        for t in failed:
            lines.append(f"  {t.trial_id}  {_failure_line(t)}")
    lines.append(f"MLflow parent run: {result.parent_run_id} ({result.tracking_uri})")
    return "\n".join(lines)



def _failure_line(trial) -> str:
    kind = getattr(trial, "failure_kind", None)
    text = (trial.error or "failed").replace("\n", "\n" + " " * (len(trial.trial_id) + 4))
    return f"[{kind}] {text}" if kind else text
