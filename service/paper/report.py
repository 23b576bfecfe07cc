"""Redraw the paper's figures from stored MLflow runs alone (no other state).

``build_report(run_id)`` takes a campaign's parent run (``credit.role=campaign``) or
a single study's parent run, collects per arm the seed runs of its final
evaluation (or, without one, its best trial), and draws:

- Fig. 1 (mnist-fc): (A) relative error ‖W−B‖/‖W‖, (B) angle between true and
  synthetic signal, (C) sign congruence — per layer —, (D) test error;
- Fig. 2 (mnist-autoencoder): train (dashed) and test (solid) loss per rule, the
  test set's 2-D codes coloured by digit and sample reconstructions per rule;
- CIFAR-10: test accuracy per rule;

every curve a mean ± standard error over seeds, plus a table of our numbers beside
the paper's, and one self-contained HTML page. A missing or failed arm is marked as
such instead of breaking the report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from service.paper.arms import PAPER
from service.paper.figures import DPI, FIGURES, ArmData, nanmin
from service.records import tags
from service.records import tracking as T
from trainables.errors import CreditError
from trainables.numbers import mean_sem


class ReportError(CreditError):
    """The run is not a campaign or study run, or cannot be read."""


@dataclass
class Report:
    run_id: str
    experiment: str
    arms: list[ArmData]
    table: list[dict[str, Any]]
    figures: dict[str, Path]
    html: Path


# ------------------------------------------------------------------- reading MLflow
def collect_arms(run_id: str, tracking_uri: str) -> tuple[Any, str, list[ArmData]]:
    c = T.client(tracking_uri)
    try:
        root = c.get_run(run_id)
    except Exception as e:
        raise ReportError(f"no MLflow run {run_id!r} at {tracking_uri}") from e
    role = root.data.tags.get(tags.ROLE)
    exp_id = root.info.experiment_id
    experiment = root.data.tags.get(tags.EXPERIMENT, "")
    if role == "campaign":
        studies = [r for r in T.child_runs(tracking_uri, exp_id, run_id)
                   if r.data.tags.get(tags.ROLE) == "study"]
        declared = [k for k in root.data.tags.get(tags.ARMS, "").split(",") if k]
    elif role == "study":
        studies, declared = [root], []
    else:
        raise ReportError(f"run {run_id} is neither a campaign nor a study run (role {role!r})")
    by_key = {}
    for s in studies:
        key = s.data.tags.get(tags.ARM) or s.data.tags.get(tags.RULE, s.info.run_id)
        by_key[key] = s
    arms = []
    for key in declared + [k for k in by_key if k not in declared]:
        study = by_key.get(key)
        if study is None:
            arms.append(ArmData(key, _label(experiment, key), "missing", "no study was run"))
            continue
        arms.append(_arm(c, tracking_uri, exp_id, study, key, experiment))
    return root, experiment, arms


def _label(experiment: str, key: str) -> str:
    for arm in PAPER.get(experiment, PAPER["mnist-fc"]).arms:
        if arm.key == key:
            return arm.label
    if key.startswith("np-c"):
        return f"node perturbation, c = {key[4:]}"
    return key


def _arm(c, tracking_uri, exp_id, study, key, experiment) -> ArmData:
    label = study.data.tags.get(tags.ARM_LABEL) or _label(experiment, key)
    children = T.child_runs(tracking_uri, exp_id, study.info.run_id)
    runs = [r for r in children if r.data.tags.get(tags.ROLE) == "final"
            and r.info.status == "FINISHED"]
    best = study.data.tags.get(tags.BEST_RUN)
    if not runs or study.data.tags.get(tags.FIXED) == "1":
        # a fixed arm (no search): its one trial is a seed like the final ones
        runs += [r for r in children if r.info.run_id == best and r.info.status == "FINISHED"]
    if not runs:
        reason = study.data.tags.get(tags.FAILURE) or f"study {study.info.status.lower()}, " \
                                                        "no finished run"
        return ArmData(key, label, "failed", reason)
    arm = ArmData(key, label, "ok", reference=study.data.tags.get(tags.REFERENCE, ""),
                  runs=sorted(runs, key=lambda r: int(r.data.params.get("seed", 0))))
    keys = sorted({k for r in runs for k in r.data.metrics
                   if k in ("test_error", "test_loss", "train_loss", "step_test_loss")
                   or k.split("/")[0] in ("angle", "relative_error", "sign_congruence")})
    for k in keys:
        rows = []
        for r in arm.runs:
            hist = sorted(c.get_metric_history(r.info.run_id, k), key=lambda m: m.step)
            rows.append([m.value for m in hist])
        width = max(len(row) for row in rows)
        arm.histories[k] = np.array([row + [math.nan] * (width - len(row)) for row in rows])
        arm.finals[k] = [row[-1] for row in rows if row]
    if experiment in PAPER and PAPER[experiment].artifacts:
        arm.artifacts = _autoencoder_arrays(c, arm.runs[0].info.run_id)
    return arm


def _autoencoder_arrays(c, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = c.download_artifacts(run_id, "plots/autoencoder.npz", tmp)
        except Exception:
            return {}
        with np.load(path) as data:
            return {k: data[k] for k in data.files}


# ----------------------------------------------------------------------- statistics
def table_rows(experiment: str, arms: list[ArmData]) -> list[dict[str, Any]]:
    """Our numbers beside the paper's: test error (%), min test loss ×32, or accuracy (%)."""
    reference = PAPER[experiment].reference if experiment in PAPER else {}
    table = PAPER[experiment].table if experiment in PAPER else "error"
    rows = []
    for a in arms:
        row: dict[str, Any] = {"arm": a.key, "rule": a.label, "seeds": a.n, "status": a.status,
                               "paper": a.reference or reference.get(a.key, "—")}
        if a.status == "ok":
            if "step_test_loss" in a.histories:  # the authors' protocol: already per 32 images
                per_seed = [nanmin(h) for h in a.histories["step_test_loss"]]
                row["metric"] = "min per-step test loss per 32 images (authors' protocol)"
            elif table == "loss32":
                per_seed = [nanmin(h) * 32 for h in a.histories.get("test_loss", [])]
                row["metric"] = "min test loss per 32 images"
            elif table == "accuracy":
                per_seed = [100 * (1 - v) for v in a.finals.get("test_error", [])]
                row["metric"] = "test accuracy (%)"
            else:
                per_seed = [100 * v for v in a.finals.get("test_error", [])]
                row["metric"] = "test error (%)"
            row["mean"], row["sem"] = mean_sem(per_seed)
            row["values"] = per_seed
        else:
            row.update(metric="", mean=None, sem=None, values=[], reason=a.reason)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    metric = next((r["metric"] for r in rows if r.get("metric")), "value")
    lines = [f"| rule | seeds | ours: {metric} | paper |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        ours = (f"{r['mean']:.3g} ± {r['sem']:.2g}" if r.get("mean") is not None
                and math.isfinite(r["mean"]) else f"*{r['status']}*")
        lines.append(f"| {r['rule']} | {r['seeds']} | {ours} | {r['paper']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ HTML
def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _html(root, experiment: str, rows, images: dict[str, bytes]) -> str:
    title = f"credit-search report — {experiment} — run {root.info.run_id}"
    head = ("<tr><th>rule</th><th>seeds</th><th>ours</th><th>paper</th><th>status</th></tr>")
    body = []
    for r in rows:
        ours = (f"{r['mean']:.4g} ± {r['sem']:.2g}" if r.get("mean") is not None
                and math.isfinite(r["mean"]) else "—")
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        body.append(f"<tr><td>{html.escape(r['rule'])}</td><td>{r['seeds']}</td>"
                    f"<td>{ours}</td><td>{html.escape(r['paper'])}</td>"
                    f"<td>{html.escape(status)}</td></tr>")
    metric = next((r["metric"] for r in rows if r.get("metric")), "")
    figs = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(name)}</figcaption>'
        f"</figure>" for name, data in images.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}figure{{margin:2em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Rebuilt from the MLflow runs of {html.escape(root.info.run_name or root.info.run_id)}.
Mean ± standard error over seeds. Metric: {html.escape(metric)}.</p>
<table>{head}{''.join(body)}</table>
{figs}
</body></html>
"""


#: Every figure a report can hold, by file name (``PaperExperiment.figures`` picks).
def build_report(run_id: str, tracking_uri: str, out_dir: str | Path | None = None,
                 log_to_mlflow: bool = True) -> Report:
    """Draw the figures and table of a campaign or study run; write PNGs and one HTML page
    into ``out_dir`` and (by default) log them as artifacts ``report/`` of that run."""
    root, experiment, arms = collect_arms(run_id, tracking_uri)
    if experiment not in PAPER:
        raise ReportError(f"run {run_id} has no known experiment (got {experiment!r})")
    figures = {name: FIGURES[name](arms) for name in PAPER[experiment].figures}
    rows = table_rows(experiment, arms)
    images = {name: _png(fig) for name, fig in figures.items()}
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="credit-report-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in images.items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    (out / "table.md").write_text(format_table(rows) + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    page = out / "report.html"
    page.write_text(_html(root, experiment, rows, images))
    if log_to_mlflow:
        T.client(tracking_uri).log_artifacts(run_id, str(out), artifact_path="report")
    return Report(run_id, experiment, arms, rows, paths, page)
