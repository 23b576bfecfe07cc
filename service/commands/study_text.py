"""How ``credit studies`` prints a study, its best configuration and its Pareto front."""

from __future__ import annotations

from typing import Any


def format_study(s: dict[str, Any], base_url: str) -> str:
    c = s["counts"]
    obj = s["objective"]
    goals = ", ".join(f"{o['mode']} {o['metric']}" for o in s.get("objectives") or [obj])
    lines = [f"study {s['name']} ({s['id']}): {status(s)}"
             + (f" — {s['message']}" if s["message"] else ""),
             f"  space {s['space']}, sampler {s['sampler']}, objective "
             f"{goals}, {s['max_trials']} trials, {s['parallel_trials']} at once",
             f"  trials: {c['complete']} complete, {c['running']} running, "
             f"{c['failed']} failed, {c['pruned']} pruned; restarts {s.get('restarts', 0)}"]
    if s["best"] is not None:
        params = ", ".join(f"{k}={number(v)}" for k, v in sorted(s["best"]["params"].items()))
        lines.append(f"  best so far: {obj['metric']} {number(s['best']['value'])} ({params})")
    lines.append(f"  API:    {base_url}{s['links']['self']}")
    lines.append(f"  MLflow: {s['links']['mlflow'] or '(once the study has started)'}")
    if s["links"].get("optuna"):
        lines.append(f"  Optuna: {s['links']['optuna']}")
    return "\n".join(lines)


def status(s: dict[str, Any]) -> str:
    """The study's status, with its place while it is queued (``QUEUED #2``)."""
    place = s.get("queue_position")
    return f"{s['status']} #{place}" if place else s["status"]


def number(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def format_best(b: dict[str, Any]) -> str:
    state = "final" if b["final"] else f"so far, study {b['status']}"
    lines = [f"best {b['metric']} ({b['mode']}): {number(b['value'])}  [{state}]"]
    width = max((len(k) for k in b["params"]), default=0)
    for k, v in sorted(b["params"].items()):
        lines.append(f"  {k:<{width}}  {number(v)}")
    shown = [k for k in ("test_error", "test_loss", "train_loss", "time_s")
             if k in (b.get("metrics") or {})]
    if shown:
        lines.append("its run: " + ", ".join(f"{k} {number(b['metrics'][k])}" for k in shown))
    if b.get("final_evaluation"):
        ev = b["final_evaluation"]
        lines.append(f"final evaluation over {int(ev.get('final_seeds', 0))} seeds "
                     "(mean ± standard error):")
        for key in sorted(k for k in ev if k.endswith("_mean")):
            base = key[len("final/"):-len("_mean")]
            lines.append(f"  {base:<24} {ev[key]:.6g} ± {ev.get(f'final/{base}_sem', 0.0):.2g}")
    lines.append(f"trial {b['trial_id']}, MLflow run {b['mlflow_run_id']}")
    if b.get("mlflow_url"):
        lines.append(f"MLflow: {b['mlflow_url']}")
    return "\n".join(lines)


def format_pareto(front: dict[str, Any]) -> str:
    """A ``GET /studies/{id}/pareto`` answer: one line per trial of the front."""
    goals = front["objectives"]
    lines = [f"  Pareto front: {front['count']} of {front['complete_trials']} complete "
             "trials, " + ", ".join(f"{o['metric']} ({o['mode']})" for o in goals)]
    for t in front["data"]:
        values = "  ".join(f"{o['metric']} {number(t['values'].get(o['metric']))}"
                           for o in goals)
        params = ", ".join(f"{k}={number(v)}" for k, v in sorted(t["params"].items()))
        lines.append(f"    #{t['number']}  {values}  ({params})  run {t['mlflow_run_id']}")
    return "\n".join(lines)
