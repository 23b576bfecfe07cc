"""What a study's plots show, as plain numbers: its objectives, the best value so far
after each trial, each searched parameter against the objective, and the Pareto front of
several objectives. Read by the parent run's artifacts (``study_artifacts``: PNG, HTML)
and by the service's page (``service.api.views``: inline SVG), so both draw the same
points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.trials import TrialState, better, is_finite


@dataclass(frozen=True)
class Axis:
    """A searched parameter as a plot's x-axis: its range (``low``/``high``), whether the
    space draws it log-uniformly, or its ``choices``."""

    name: str
    log: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None


def objectives_of(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The study's objectives (``{metric, mode}``), first the one its value is: the spec's
    ``objectives`` when it has several, else its ``objective``."""
    several = spec.get("objectives") or []
    return [dict(o) for o in several] if several else [dict(spec["objective"])]


def axes_of(space) -> list[Axis]:
    """The searched parameters of a ``SearchSpace``, in its order."""
    out = []
    for name, p in space.params.items():
        choices = getattr(p, "choices", None)
        out.append(Axis(name, bool(getattr(p, "log", False)), getattr(p, "low", None),
                        getattr(p, "high", None), tuple(choices) if choices else None))
    return out


def complete(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The COMPLETE trials with a finite value, by trial number."""
    return sorted((t for t in trials if t.get("state") == TrialState.COMPLETE
                   and is_finite(t.get("value"))), key=lambda t: t["number"])


def best_so_far(trials: list[dict[str, Any]], mode: str) -> list[tuple[int, float, float]]:
    """``(trial number, its value, the best value up to it)`` of every complete trial."""
    out, best = [], None
    for t in complete(trials):
        if better(t["value"], best, mode):
            best = t["value"]
        out.append((t["number"], t["value"], best))
    return out


def best_value(trials: list[dict[str, Any]], mode: str) -> float | None:
    """The best value of the complete trials (None: none yet)."""
    curve = best_so_far(trials, mode)
    return curve[-1][2] if curve else None


def param_points(trials: list[dict[str, Any]], name: str) -> list[tuple[Any, float, int]]:
    """``(value of parameter name, objective, trial number)`` of every complete trial
    that has the parameter."""
    return [(t["params"][name], t["value"], t["number"]) for t in complete(trials)
            if name in (t.get("params") or {})]


def values_of(trial: dict[str, Any], objectives: list[dict[str, str]]) -> list[float] | None:
    """A trial's value of each objective: its ``values`` (a list in the objectives' order,
    or a mapping metric → value); None unless every one is finite."""
    raw = trial.get("values")
    if isinstance(raw, dict):
        raw = [raw.get(o["metric"]) for o in objectives]
    if not isinstance(raw, list | tuple) or len(raw) != len(objectives):
        return None
    return list(raw) if all(is_finite(v) for v in raw) else None


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """Whether ``a`` is no worse than ``b`` in every objective and better in one."""
    no_worse = all(x == y or better(x, y, m) for x, y, m in zip(a, b, modes, strict=True))
    return no_worse and any(better(x, y, m) for x, y, m in zip(a, b, modes, strict=True))


def pareto(trials: list[dict[str, Any]], objectives: list[dict[str, str]]
           ) -> tuple[list[tuple[int, list[float]]], list[tuple[int, list[float]]]]:
    """``(front, the others)``: (trial number, values) of the COMPLETE trials with every
    objective's value, the non-dominated ones first."""
    modes = [o.get("mode", "min") for o in objectives]
    points = [(t["number"], v) for t in trials if t.get("state") == TrialState.COMPLETE
              and (v := values_of(t, objectives)) is not None]
    front = [(n, v) for n, v in points
             if not any(dominates(w, v, modes) for _, w in points)]
    numbers = {n for n, _ in front}
    return sorted(front), sorted((n, v) for n, v in points if n not in numbers)


def final_seeds(final: dict[str, float] | None, metric: str) -> tuple[float, float, int] | None:
    """``(mean, s.e.m., seeds)`` of ``metric`` over the best configuration's final seeds
    (the runner's ``final_evaluation``: ``final/<metric>_mean``, ``_sem``), or None."""
    if not final or f"final/{metric}_mean" not in final:
        return None
    return (final[f"final/{metric}_mean"], final.get(f"final/{metric}_sem", float("nan")),
            int(final.get("final_seeds", 0)))
