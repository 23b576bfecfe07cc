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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from service import tracking as T
from service.paper import PAPER
from trainables.errors import CreditError
from trainables.metrics import mean_sem

DPI = 110
LAYER_STYLES = ("-", "--", ":", "-.")


class ReportError(CreditError):
    """The run is not a campaign or study run, or cannot be read."""


@dataclass
class ArmData:
    key: str
    label: str
    status: str  # ok | missing | failed
    reason: str = ""
    reference: str = ""  # the authors' number for this arm, where the study records one
    runs: list = field(default_factory=list)  # MLflow Run objects (one per seed)
    histories: dict[str, np.ndarray] = field(default_factory=dict)  # key → (seeds, epochs)
    finals: dict[str, list[float]] = field(default_factory=dict)  # key → last value per seed
    artifacts: dict[str, Any] = field(default_factory=dict)  # autoencoder arrays

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Report:
    run_id: str
    experiment: str
    arms: list[ArmData]
    table: list[dict[str, Any]]
    figures: dict[str, Path]
    html: Path


# ------------------------------------------------------------------- reading MLflow
def _collect(run_id: str, tracking_uri: str) -> tuple[Any, str, list[ArmData]]:
    c = T.client(tracking_uri)
    try:
        root = c.get_run(run_id)
    except Exception as e:
        raise ReportError(f"no MLflow run {run_id!r} at {tracking_uri}") from e
    role = root.data.tags.get(T.ROLE_TAG)
    exp_id = root.info.experiment_id
    experiment = root.data.tags.get("credit.experiment", "")
    if role == "campaign":
        studies = [r for r in T.child_runs(tracking_uri, exp_id, run_id)
                   if r.data.tags.get(T.ROLE_TAG) == "study"]
        declared = [k for k in root.data.tags.get("credit.arms", "").split(",") if k]
    elif role == "study":
        studies, declared = [root], []
    else:
        raise ReportError(f"run {run_id} is neither a campaign nor a study run (role {role!r})")
    by_key = {}
    for s in studies:
        key = s.data.tags.get("credit.arm") or s.data.tags.get("credit.rule", s.info.run_id)
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
    label = study.data.tags.get("credit.arm_label") or _label(experiment, key)
    children = T.child_runs(tracking_uri, exp_id, study.info.run_id)
    runs = [r for r in children if r.data.tags.get(T.ROLE_TAG) == "final"
            and r.info.status == "FINISHED"]
    best = study.data.tags.get("credit.best_run_id")
    if not runs or study.data.tags.get("credit.fixed") == "1":
        # a fixed arm (no search): its one trial is a seed like the final ones
        runs += [r for r in children if r.info.run_id == best and r.info.status == "FINISHED"]
    if not runs:
        reason = study.data.tags.get(T.FAILURE_TAG) or f"study {study.info.status.lower()}, " \
                                                        "no finished run"
        return ArmData(key, label, "failed", reason)
    arm = ArmData(key, label, "ok", reference=study.data.tags.get("credit.reference", ""),
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
def _nanmin(values) -> float:
    """The smallest finite value; NaN (no warning) when there is none."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.min()) if finite.size else math.nan


def _curve(history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    epochs = np.arange(1, history.shape[1] + 1)
    # An epoch no seed reached is NaN on purpose (a gap in the curve), not a warning.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(history, axis=0)
        count = np.sum(np.isfinite(history), axis=0)
        sem = np.where(count > 1, np.nanstd(history, axis=0, ddof=1) / np.sqrt(count), 0.0)
    return epochs, mean, sem


# --------------------------------------------------------------------------- figures
def _colors(arms: list[ArmData]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {a.key: cmap(i % 10) for i, a in enumerate(arms)}


def _band(ax, history, color, label=None, style="-", scale=1.0):
    epochs, mean, sem = _curve(history * scale)
    ax.plot(epochs, mean, style, color=color, label=label, lw=1.6)
    ax.fill_between(epochs, mean - sem, mean + sem, color=color, alpha=0.2, lw=0)


def _missing_note(fig: Figure, arms: list[ArmData]) -> None:
    gone = [f"{a.label}: {a.status} ({a.reason})" for a in arms if a.status != "ok"]
    if gone:
        fig.text(0.01, 0.005, "not shown — " + "; ".join(gone), fontsize=7, color="firebrick",
                 va="bottom", wrap=True)


def figure1(arms: list[ArmData]) -> Figure:
    """The paper's Fig. 1: alignment per layer and test error, one colour per arm."""
    fig = Figure(figsize=(12, 8.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0, 0], "relative_error", "A  relative error", r"$\|W-B\|_F / \|W\|_F$"),
        (axes[0, 1], "angle", "B  angle between true and synthetic signal", "angle (°)"),
        (axes[1, 0], "sign_congruence", "C  sign congruence", "sign congruence (%)"),
    ]
    colors = _colors(arms)
    ok = [a for a in arms if a.status == "ok"]
    # backprop's B is W: its alignment is exact by construction, so (as in the paper)
    # panels A–C show the rules that must learn or live with their feedback.
    aligned = [a for a in ok if a.key != "bp"]
    layers = sorted({k.split("/")[1] for a in ok for k in a.histories if "/" in k})
    for ax, family, title, ylabel in panels:
        for a in aligned:
            for i, layer in enumerate(layers):
                key = f"{family}/{layer}"
                if key in a.histories:
                    _band(ax, a.histories[key], colors[a.key], style=LAYER_STYLES[i % 4])
        ax.set_title(title, loc="left", fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[0, 1].set_ylim(0, 180)
    axes[1, 0].set_ylim(0, 100)
    ax = axes[1, 1]
    for a in ok:
        if "test_error" in a.histories:
            _band(ax, a.histories["test_error"], colors[a.key], label=f"{a.label} (n={a.n})",
                  scale=100.0)
    ax.set_title("D  test error", loc="left", fontsize=11)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.ticklabel_format(axis="y", style="plain")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[a.key], label=a.label) for a in aligned]
    handles += [Line2D([], [], color="grey", ls=LAYER_STYLES[i % 4], label=f"layer {layer}")
                for i, layer in enumerate(layers)]
    axes[0, 0].legend(handles=handles, fontsize=8, loc="upper right")
    ax.legend(fontsize=8)
    for axis in axes.flat:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Fig. 1 — node perturbation in a 784-50-20-10 network (mean ± s.e.m.)")
    _missing_note(fig, arms)
    return fig


def figure2(arms: list[ArmData]) -> Figure:
    """The paper's Fig. 2a: train (dashed) and test (solid) loss per rule."""
    fig = Figure(figsize=(8, 5.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    colors = _colors(arms)
    for a in arms:
        if a.status != "ok":
            continue
        if "train_loss" in a.histories:
            _band(ax, a.histories["train_loss"], colors[a.key], style="--")
        if "test_loss" in a.histories:
            _band(ax, a.histories["test_loss"], colors[a.key], label=f"{a.label} (n={a.n})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image (½‖x̂ − x‖²)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Fig. 2a — MNIST autoencoder 784-200-2-200-784: train (dashed), test (solid)")
    ax.legend(fontsize=8)
    _missing_note(fig, arms)
    return fig


def figure2_latent(arms: list[ArmData]) -> Figure:
    """Fig. 2b: the test set's 2-D codes coloured by digit, one panel per rule."""
    ok = [a for a in arms if a.status == "ok" and "codes" in a.artifacts]
    fig = Figure(figsize=(3.4 * max(len(arms), 1), 3.6), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(arms), 1)))
    from trainables.plots import digit_handles, draw_latent

    for ax, a in zip(axes, arms, strict=False):
        ax.set_title(a.label, fontsize=9)
        if a not in ok:
            ax.set_xlabel("code 1")
            ax.set_ylabel("code 2")
            ax.text(0.5, 0.5, a.status, ha="center", va="center", transform=ax.transAxes,
                    color="firebrick")
            continue
        draw_latent(ax, a.artifacts["codes"], a.artifacts["labels"], size=3)
    fig.legend(handles=digit_handles(range(10)), loc="outside right center", title="digit",
               fontsize=7)
    fig.suptitle("Fig. 2b — latent space per rule")
    return fig


def figure2_reconstructions(arms: list[ArmData], n: int = 8) -> Figure:
    """Fig. 2c: originals (top row) and each rule's reconstructions."""
    rows = [a for a in arms if a.status == "ok" and "recon" in a.artifacts]
    fig = Figure(figsize=(1.1 * n, 1.2 * (len(rows) + 1) + 0.4), dpi=DPI, layout="constrained")
    if not rows:
        fig.text(0.5, 0.5, "no reconstructions stored", ha="center")
        return fig
    axes = np.atleast_2d(fig.subplots(len(rows) + 1, n))
    from trainables.plots import draw_digit

    originals = rows[0].artifacts["originals"][:n]
    for j in range(n):
        for i, (label, images) in enumerate(
                [("original", originals)] + [(a.label, a.artifacts["recon"][:n]) for a in rows]):
            draw_digit(axes[i, j], images[j])
            if j == 0:
                axes[i, j].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Fig. 2c — sample reconstructions")
    return fig


def figure_cifar(arms: list[ArmData]) -> Figure:
    """CIFAR-10 test accuracy per rule (mean ± s.e.m. over seeds)."""
    fig = Figure(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    colors = _colors(arms)
    for i, a in enumerate(arms):
        if a.status != "ok":
            ax.text(i, 1, a.status, ha="center", color="firebrick", rotation=90, va="bottom")
            continue
        mean, sem = mean_sem([100 * (1 - v) for v in a.finals.get("test_error", [])])
        ax.bar(i, mean, yerr=sem, color=colors[a.key], capsize=4, label=f"{a.label} (n={a.n})")
    ax.set_xticks(range(len(arms)), [a.label for a in arms], rotation=15, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("CIFAR-10 CNN — test accuracy")
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- table
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
                per_seed = [_nanmin(h) for h in a.histories["step_test_loss"]]
                row["metric"] = "min per-step test loss per 32 images (authors' protocol)"
            elif table == "loss32":
                per_seed = [_nanmin(h) * 32 for h in a.histories.get("test_loss", [])]
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
FIGURES = {"fig1.png": figure1, "fig2.png": figure2, "fig2_latent.png": figure2_latent,
           "fig2_reconstructions.png": figure2_reconstructions, "cifar10.png": figure_cifar}


# ------------------------------------------------------------------------------ main
def build_report(run_id: str, tracking_uri: str, out_dir: str | Path | None = None,
                 log_to_mlflow: bool = True) -> Report:
    """Draw the figures and table of a campaign or study run; write PNGs and one HTML page
    into ``out_dir`` and (by default) log them as artifacts ``report/`` of that run."""
    root, experiment, arms = _collect(run_id, tracking_uri)
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
