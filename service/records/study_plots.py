"""Plots of a study as a whole, rendered on the server with matplotlib (a ``Figure``
built directly, never pyplot: no backend, nothing global, any thread), and the PNG
logged on the study's parent MLflow run.

So far: the Pareto front of a study with several objectives (``pareto_figure``): every
COMPLETE trial as a point, the non-dominated ones marked and joined, for the first two
objectives (the others are listed in the title).
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.figure import Figure

#: The parent run's artifact holding the Pareto plot.
PARETO_PNG = "pareto.png"
DPI = 100


def pareto_figure(name: str, objectives: list[dict[str, str]],
                  points: list[dict[str, float]], front: list[dict[str, float]]) -> Figure:
    """``points``: each COMPLETE trial's values by metric; ``front``: those of the Pareto
    front (a subset). Axes: the first two objectives, with their direction."""
    (x, y) = (objectives[0], objectives[1])
    fig = Figure(figsize=(6.4, 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()

    def coords(values: list[dict[str, float]]) -> tuple[list[float], list[float]]:
        kept = [v for v in values if v.get(x["metric"]) is not None
                and v.get(y["metric"]) is not None]
        return [v[x["metric"]] for v in kept], [v[y["metric"]] for v in kept]

    ax.scatter(*coords(points), s=28, color="0.6", label=f"trials ({len(points)})")
    fx, fy = coords(front)
    order = sorted(range(len(fx)), key=lambda i: (fx[i], fy[i]))
    ax.plot([fx[i] for i in order], [fy[i] for i in order], "-o", color="tab:red",
            markersize=6, label=f"Pareto front ({len(fx)})")
    ax.set_xlabel(f"{x['metric']} ({x['mode']})")
    ax.set_ylabel(f"{y['metric']} ({y['mode']})")
    more = ", ".join(f"{o['metric']} ({o['mode']})" for o in objectives[2:])
    ax.set_title(f"study {name}: Pareto front" + (f"\nalso: {more}" if more else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def log_pareto_plot(c: Any, run_id: str, name: str, objectives: list[dict[str, str]],
                    points: list[dict[str, float]], pareto: list[dict[str, Any]]) -> None:
    """The Pareto plot (``PARETO_PNG``) on run ``run_id`` (the study's parent run)."""
    fig = pareto_figure(name, objectives, points, [p["values"] for p in pareto])
    c.log_figure(run_id, fig, PARETO_PNG)
