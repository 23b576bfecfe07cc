"""``credit search``'s work: the study itself, run in this process with a live
progress line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.commands.options import UsageError
from service.runner.study import run_study
from service.spec import StudyError, StudySpec
from service.text import mean_sem, number
from service.trials import TrialState
from trainables.numbers import finite_or_none


def search(args: argparse.Namespace, spec: StudySpec) -> int:
    """Run ``spec`` to its end; print the result, write the JSON."""
    goals = ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives)
    progress = Progress(args.quiet, f"study {spec.name}: space {spec.search_space().name}, "
                        f"{spec.max_trials} trials, sampler {spec.sampler}, "
                        f"objective{'s' if spec.multi_objective else ''} {goals}")
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


class Progress:
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
        best = number(state["best"])
        line = (f"trials {c['complete'] + c['failed'] + c['pruned']}/{state['max_trials']}: "
                f"{c['complete']} complete, {c['running']} running, {c['failed']} failed, "
                f"{c['pruned']} pruned · best {state['metric']} {best}")
        if line != self.last:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
            self.last = line

    def close(self) -> None:
        if self.last and not self.quiet:
            print(file=sys.stderr)


def format_result(result) -> str:
    c = result.counts
    lines = [f"study {result.name}: {result.status}"
             + (f" ({result.message})" if result.message else ""),
             f"trials: {c.get('complete', 0)} complete, {c.get('failed', 0)} failed, "
             f"{c.get('pruned', 0)} pruned · {result.wall_time_s:.1f} s", ""]
    if result.pareto:
        lines += format_pareto(result.objectives, result.pareto)
    elif result.best_params is None:
        lines.append("no best configuration: no trial completed")
    else:
        obj = result.objective
        lines.append(f"best {obj['metric']} ({obj['mode']}): {number(result.best_value, '.6g')}")
        width = max(len(k) for k in result.best_params)
        for k, v in sorted(result.best_params.items()):
            lines.append(f"  {k:<{width}}  {number(v, '.6g')}")
        lines.append(f"MLflow run of the best trial: {result.best_run_id}")
    if result.final:
        n = int(result.final.get("final_seeds", 0))
        lines.append(f"final evaluation over {n} seeds (mean ± standard error):")
        for key in sorted(k for k in result.final if k.endswith("_mean")):
            base = key[len("final/"):-len("_mean")]
            sem = result.final.get(f"final/{base}_sem", 0.0)
            lines.append(f"  {base:<24} {mean_sem(result.final[key], sem)}")
    failed = [t for t in result.trials if t.state == TrialState.FAILED]
    if failed:
        lines.append(f"failed trials ({len(failed)}):")
        for t in failed:
            lines.append(f"  {t.trial_id}  {_failure_line(t)}")
    lines.append(f"MLflow parent run: {result.parent_run_id} ({result.tracking_uri})")
    return "\n".join(lines)

def format_pareto(objectives: list[dict[str, str]], pareto: list[dict[str, Any]]) -> list[str]:
    """The Pareto front as lines: one per trial, its values then its parameters."""
    lines = [f"Pareto front ({len(pareto)} trials), "
             + ", ".join(f"{o['metric']} ({o['mode']})" for o in objectives) + ":"]
    for p in pareto:
        got = p.get("values") or {}
        values = "  ".join(f"{o['metric']} {number(got.get(o['metric']), '.4g')}"
                           for o in objectives)
        params = " ".join(f"{k}={number(v, '.3g')}" for k, v in sorted(p["params"].items()))
        lines.append(f"  #{p['number']}  {values}  · {params}  (run {p.get('run_id')})")
    return lines


def _failure_line(trial) -> str:
    kind = getattr(trial, "failure_kind", None)
    text = (trial.error or "failed").replace("\n", "\n" + " " * (len(trial.trial_id) + 4))
    return f"[{kind}] {text}" if kind else text
