"""The paper's figures drawn from the arms' collected histories (``service.paper.report``
collects them from MLflow): every curve a mean ± standard error over seeds."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from trainables.numbers import mean_sem
from trainables.plots import digit_handles, draw_digit, draw_latent

DPI = 110
LAYER_STYLES = ("-", "--", ":", "-.")


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


def nanmin(values) -> float:
    """The smallest finite value; NaN (no warning) when there is none."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.min()) if finite.size else math.nan


def curve(history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    cmap = matplotlib.colormaps["tab10"]
    return {a.key: cmap(i % 10) for i, a in enumerate(arms)}


def _band(ax, history, color, label=None, style="-", scale=1.0):
    epochs, mean, sem = curve(history * scale)
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
FIGURES = {"fig1.png": figure1, "fig2.png": figure2, "fig2_latent.png": figure2_latent,
           "fig2_reconstructions.png": figure2_reconstructions, "cifar10.png": figure_cifar}


# ------------------------------------------------------------------------------ main
