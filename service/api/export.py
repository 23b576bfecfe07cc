"""A study's trials as a table: one row per trial (CSV or JSON), for spreadsheets,
pandas and papers. Used by ``GET /studies/{id}/export`` and ``credit studies export``."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

FORMATS = ("csv", "json")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def export_rows(study: str, objective: dict[str, str],
                trials: list[dict[str, Any]],
                objectives: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Flat rows: study, trial number and id, state, restarts (after infrastructure
    failures), every parameter (``param.<name>``), each objective (a column named by its
    metric; ``objectives``, default ``[objective]``), the failure reason, the MLflow run
    and link."""
    metrics = [o.get("metric", "objective") for o in objectives or [objective]]
    names = sorted({k for t in trials for k in t.get("params", {})})
    rows = []
    for t in sorted(trials, key=lambda t: t["number"]):
        row: dict[str, Any] = {"study": study, "trial": t["number"],
                               "trial_id": t.get("trial_id"), "state": t["state"],
                               "restarts": t.get("restarts") or 0}
        row.update({f"param.{n}": t.get("params", {}).get(n) for n in names})
        values = t.get("values") or {}
        for i, metric in enumerate(metrics):
            row[metric] = values.get(metric, t.get("value") if i == 0 else None)
        row.update({"failure": t.get("failure"), "mlflow_run_id": t.get("mlflow_run_id"),
                    "mlflow_url": t.get("mlflow_url"),
                    "started_at": _iso(t.get("started_at")),
                    "completed_at": _iso(t.get("completed_at"))})
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], fmt: str, objective: dict[str, str]) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps({"objective": objective, "count": len(rows), "data": rows},
                          indent=2) + "\n"
    out = io.StringIO()
    columns = list(rows[0]) if rows else ["study", "trial", "trial_id", "state", "restarts"]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()
