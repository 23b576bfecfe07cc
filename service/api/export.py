"""A study's trials as a table: one row per trial (CSV or JSON), for spreadsheets,
pandas and papers. Used by ``GET /studies/{id}/export`` and ``credit studies export``."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

FORMATS = ("csv", "json")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def export_row(study: str, metrics: list[str], names: list[str],
               t: dict[str, Any]) -> dict[str, Any]:
    """One trial's flat row: study, trial number and id, state, restarts (after
    infrastructure failures), every parameter (``param.<name>``), each objective (a column
    named by its metric), the failure reason, the MLflow run and link."""
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
    return row


def columns(metrics: list[str], names: list[str]) -> list[str]:
    """The columns of ``export_row``, in order."""
    return ["study", "trial", "trial_id", "state", "restarts", *(f"param.{n}" for n in names),
            *metrics, "failure", "mlflow_run_id", "mlflow_url", "started_at", "completed_at"]


def export_rows(study: str, objective: dict[str, str],
                trials: list[dict[str, Any]],
                objectives: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """``export_row`` of each trial, by number; the parameters are those any trial has;
    a column per objective (``objectives``, default ``[objective]``)."""
    metrics = [o.get("metric", "objective") for o in objectives or [objective]]
    names = sorted({k for t in trials for k in t.get("params", {})})
    return [export_row(study, metrics, names, t)
            for t in sorted(trials, key=lambda t: t["number"])]


def render(rows: list[dict[str, Any]], fmt: str, objective: dict[str, str]) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    header = list(rows[0]) if rows else ["study", "trial", "trial_id", "state", "restarts"]
    return "".join(stream(iter(rows), fmt, objective, len(rows), header))


def stream(rows: Iterator[dict[str, Any]], fmt: str, objective: dict[str, str], count: int,
           header: list[str], chunk: int = 500) -> Iterator[str]:
    """The export's body a piece at a time (``chunk`` rows each): CSV with a header row,
    or JSON ``{"objective", "count", "data": [...]}``, so that a study of tens of
    thousands of trials is never built as one string."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = io.StringIO()
    if fmt == "json":
        out.write(json.dumps({"objective": objective, "count": count}, indent=2)[:-2]
                  + ',\n  "data": [')
    else:
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
    for i, row in enumerate(rows):
        if fmt == "json":
            out.write(("," if i else "") + "\n    " + json.dumps(row))
        else:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        if (i + 1) % chunk == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    out.write(("\n  ]\n}\n" if count else "]\n}\n") if fmt == "json" else "")
    yield out.getvalue()
