"""A study's results as files on its MLflow parent run, so that one click on the parent
run in the MLflow UI shows them: ``study/trials.html`` (every trial: state, parameters,
objective), ``study/best_so_far.png``, ``study/objective_vs_params.png`` (log x-axes
where the space is log) and, for several objectives, ``study/pareto.png``.

MLflow's runs table cannot be told to draw any of this (its charts view plots metrics
per run, not the best so far or a parameter against the objective); the points are
those of the service's page (``series``). Drawn from the Optuna study alone, so the
driver at a study's end and the service closing a cancelled one write the same files.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure

from service.records import series
from service.records.optuna_trials import STATES, study_id_of
from service.text import number

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined)
TEMPLATES.filters["num"] = number
FOLDER = "study"
COLORS = {"trial": "#9aa5b1", "best": "#0b57d0", "front": "#b00020"}


def optuna_trials(storage: Any, study_name: str) -> list[dict[str, Any]]:
    """The study's trials from Optuna as the plots read them: number, state, params, value
    (the first objective's) and values (every objective's)."""
    study_id = study_id_of(storage, study_name)
    if study_id is None:
        return []
    out = []
    for t in storage.get_all_trials(study_id, deepcopy=False):
        values = list(t.values) if t.values else None
        out.append({"number": t.number, "state": STATES[t.state].value,
                    "params": dict(t.params), "values": values,
                    "value": values[0] if values else None})
    return out


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _margins(fig: Figure, top: float = 0.25) -> None:
    """Fixed margins in inches, room for the labels (a layout solved at every save, tight
    or constrained, costs more than the drawing of these small figures)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.6 / height,
                        top=1 - top / height, wspace=0.3, hspace=0.45)


def best_so_far_png(trials: list[dict[str, Any]], objective: dict[str, str],
                    title: str) -> bytes:
    """Each complete trial's value (grey) and the best so far (a blue step line)."""
    curve = series.best_so_far(trials, objective.get("mode", "min"))
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    if curve:
        numbers, values, best = zip(*curve, strict=True)
        ax.scatter(numbers, values, s=18, color=COLORS["trial"], label="trial", zorder=2)
        ax.step(numbers, best, where="post", color=COLORS["best"], label="best so far",
                zorder=3)
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no complete trial", ha="center", transform=ax.transAxes)
    ax.set(xlabel="trial", ylabel=objective["metric"], title=title)
    ax.grid(alpha=0.3)
    _margins(fig, top=0.45)
    return _png(fig)


def objective_vs_params_png(trials: list[dict[str, Any]], objective: dict[str, str],
                            axes: list[series.Axis]) -> bytes:
    """One panel per searched parameter: its value against the objective, each complete
    trial a point, the best one ringed; log x where the space is log."""
    cols = min(3, max(1, len(axes)))
    rows = math.ceil(len(axes) / cols) or 1
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    best = series.best_value(trials, objective.get("mode", "min"))
    for i, axis in enumerate(axes):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = series.param_points(trials, axis.name)
        if axis.choices:
            xs = [axis.choices.index(x) if x in axis.choices else -1 for x, _, _ in points]
            ax.set_xticks(range(len(axis.choices)), [str(c) for c in axis.choices])
        else:
            xs = [x for x, _, _ in points]
            if axis.log:
                ax.set_xscale("log")
            if axis.low is not None and axis.high is not None:
                ax.set_xlim(axis.low, axis.high)
        ys = [y for _, y, _ in points]
        ax.scatter(xs, ys, s=20, color=COLORS["best"], alpha=0.8)
        ringed = [(x, y) for x, y in zip(xs, ys, strict=True) if y == best]
        if ringed:
            ax.scatter(*zip(*ringed, strict=True), s=90, facecolors="none",
                       edgecolors=COLORS["front"], linewidths=1.5, label="best")
        ax.set(xlabel=axis.name + (" (log)" if axis.log else ""), ylabel=objective["metric"])
        ax.grid(alpha=0.3)
    _margins(fig)
    return _png(fig)


def pareto_png(trials: list[dict[str, Any]], objectives: list[dict[str, str]]) -> bytes:
    """The first two objectives of every complete trial; the Pareto front in red."""
    front, others = series.pareto(trials, objectives)
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.add_subplot()
    for points, color, label in ((others, COLORS["trial"], "dominated"),
                                 (front, COLORS["front"], "Pareto front")):
        if points:
            ax.scatter([v[0] for _, v in points], [v[1] for _, v in points], s=24,
                       color=color, label=label)
    if front:
        ordered = sorted(v[:2] for _, v in front)
        ax.plot(*zip(*ordered, strict=True), color=COLORS["front"], alpha=0.5)
        ax.legend(fontsize=8)
    ax.set(xlabel=objectives[0]["metric"], ylabel=objectives[1]["metric"])
    ax.grid(alpha=0.3)
    _margins(fig)
    return _png(fig)


def trials_html(name: str, trials: list[dict[str, Any]], objectives: list[dict[str, str]],
                axes: list[series.Axis], final: dict[str, float] | None = None) -> str:
    """The study's table as one self-contained HTML page: best first, then the others."""
    mode = objectives[0].get("mode", "min")
    ranked = sorted(trials, key=lambda t: (
        t["state"] != "COMPLETE", series.complete([t]) == [],
        (t["value"] if mode == "min" else -t["value"]) if series.complete([t]) else 0,
        t["number"]))
    return TEMPLATES.get_template("study_table.html").render(
        name=name, trials=ranked, objectives=objectives, axes=axes,
        best=series.best_value(trials, mode),
        final=series.final_seeds(final, objectives[0]["metric"]))


def study_files(name: str, trials: list[dict[str, Any]], objectives: list[dict[str, str]],
                axes: list[series.Axis], final: dict[str, float] | None = None
                ) -> dict[str, bytes]:
    """Every file of the study's results: name under ``study/`` → content."""
    files = {"trials.html": trials_html(name, trials, objectives, axes, final).encode(),
             "best_so_far.png": best_so_far_png(trials, objectives[0], name),
             "objective_vs_params.png": objective_vs_params_png(trials, objectives[0], axes)}
    if len(objectives) >= 2:
        files["pareto.png"] = pareto_png(trials, objectives)
    return files


def log_study_artifacts(c, run_id: str, files: dict[str, bytes]) -> None:
    """Put ``files`` on run ``run_id`` under ``study/``, in one upload."""
    with tempfile.TemporaryDirectory(prefix="credit-study-") as folder:
        for filename, content in files.items():
            (Path(folder) / filename).write_bytes(content)
        c.log_artifacts(run_id, folder, FOLDER)
