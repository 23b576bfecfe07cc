"""Figures of one trial: learning curves, alignment metrics, and the autoencoder's codes.

Pure matplotlib, built on ``matplotlib.figure.Figure`` directly (never pyplot): no
backend is selected, nothing global is touched, and figures can be made from any
thread. Every function returns a ``Figure``; ``save_figures`` writes them as PNGs.

Inputs are the trainer's outputs (``trainables.trainer``): a history is a list of
per-epoch metric dicts (``epoch``, ``train_loss``, ``test_loss``, ``test_error`` as
a fraction, and ``<family>/<layer>`` alignment metrics). Missing values and ``None``
(a NaN written to JSON) are plotted as gaps.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

History = Sequence[Mapping[str, float | None]]

DPI = 100
_SCALES = {"test_error": 100.0}  # plotted as a percentage
_MARKER_MAX_POINTS = 25  # mark each epoch when there are at most this many


@dataclass(frozen=True)
class _Family:
    """One alignment metric family: its key prefix and how its panel looks."""

    key: str
    label: str
    top: float | None = None  # the y axis starts at 0; None: up to the data
    reference: float | None = None  # a dotted horizontal line (chance level)


ALIGNMENT_FAMILIES = (
    _Family("angle", "angle (°)", 180.0, 90.0),
    _Family("update_angle", "update angle (°)", 180.0, 90.0),
    _Family("relative_error", r"relative error $\|W-B\|_F\,/\,\|W\|_F$"),
    _Family("sign_congruence", "sign congruence (%)", 100.0, 50.0),
)


# ------------------------------------------------------------------ helpers
def _series(history: History, key: str, scale: float = 1.0) -> np.ndarray:
    """The values of ``key`` over the epochs as floats; missing or None becomes NaN."""
    values = [h.get(key) for h in history]
    return np.array([math.nan if v is None else float(v) * scale for v in values], dtype=float)


def _epochs(history: History) -> np.ndarray:
    """Epoch numbers, counting from 1 where a record has none."""
    epochs = [h.get("epoch") for h in history]
    return np.array([i + 1 if e is None else e for i, e in enumerate(epochs)], dtype=float)


def _has(history: History, key: str) -> bool:
    return any(h.get(key) is not None for h in history)


def _natural_key(name: str) -> list:
    """Sort 'fc2' before 'fc10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layers(history: History, family: str) -> list[str]:
    """Layer names that have a ``family/<layer>`` metric somewhere in the history."""
    prefix = family + "/"
    names = {k[len(prefix):] for h in history for k in h if k.startswith(prefix)}
    return sorted(names, key=_natural_key)


def _line_style(n_points: int) -> dict:
    """Markers for short histories, so that a single epoch is still visible."""
    return {"marker": "o", "markersize": 3} if n_points <= _MARKER_MAX_POINTS else {}


def _new_figure(width: float, height: float, title: str | None) -> Figure:
    # 'compressed' solves the layout once per draw like 'constrained' but for fixed-aspect
    # grids; a plain grid with fixed margins ('tight' is solved on every save) is cheapest.
    fig = Figure(figsize=(width, height))
    top = 0.75 if title else 0.35  # margins in inches, whatever the figure's size
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.2 / width, bottom=0.6 / height,
                        top=1 - top / height, wspace=0.3, hspace=0.45)
    if title:
        fig.suptitle(title)
    return fig


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _from_zero(ax, top: float | None = None) -> None:
    """Start the y axis at 0, keeping a margin above the highest finite value."""
    if top is None:
        data_top = ax.dataLim.y1
        top = 1.05 * data_top if math.isfinite(data_top) and data_top > 0 else None
    ax.set_ylim(0.0, top)


def _layer_colors(history: History) -> dict[str, tuple]:
    """One tab10 colour per layer, the same in every panel."""
    names = sorted({k.partition("/")[2] for h in history for k in h if "/" in k},
                   key=_natural_key)
    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


# ------------------------------------------------------------------ figures
def learning_curves(history: History, title: str | None = None,
                    n_points: int | None = None) -> Figure:
    """Train (dashed) and test (solid) loss per epoch, and the test error (%) if measured.

    Each line's ``gid`` is its metric (``CurveSheets`` redraws them); ``n_points`` sets
    the markers' style when ``history`` is not one run's (default: its length)."""
    with_error = _has(history, "test_error")
    fig = _new_figure(10.0 if with_error else 5.5, 3.8, title)
    axes = fig.subplots(1, 2 if with_error else 1, squeeze=False)[0]
    epochs = _epochs(history)
    style = _line_style(len(history) if n_points is None else n_points)

    ax = axes[0]
    ax.plot(epochs, _series(history, "train_loss"), "--", color="C0", label="train",
            gid="train_loss", **style)
    ax.plot(epochs, _series(history, "test_loss"), "-", color="C1", label="test",
            gid="test_loss", **style)
    ax.set_ylabel("loss")
    _epoch_axis(ax)
    ax.legend()

    if with_error:
        ax = axes[1]
        ax.plot(epochs, _series(history, "test_error", _SCALES["test_error"]), "-",
                color="C1", label="test", gid="test_error", **style)
        ax.set_ylabel("test error (%)")
        _from_zero(ax)
        _epoch_axis(ax)
        ax.legend()
    return fig


def _alignment_panel(ax, history: History, family: _Family, colors: dict[str, tuple],
                     n_points: int) -> None:
    """One family: a line per layer, its limits and its chance-level reference line."""
    epochs, style = _epochs(history), _line_style(n_points)
    for layer in _layers(history, family.key):
        key = f"{family.key}/{layer}"
        ax.plot(epochs, _series(history, key), color=colors[layer], label=layer, gid=key,
                **style)
    if family.reference is not None:
        ax.axhline(family.reference, color="0.4", linestyle=":", linewidth=1.0)
    _from_zero(ax, family.top)
    ax.set_ylabel(family.label)
    _epoch_axis(ax)
    ax.legend(title="layer", fontsize="small", title_fontsize="small")


def alignment_curves(history: History, title: str | None = None,
                     n_points: int | None = None) -> Figure:
    """One panel per alignment family present in the history, one line per layer.

    Families without any key (e.g. relative error for the lower layers of direct
    rules) are left out; with none at all the figure says so in a single panel.
    """
    families = [f for f in ALIGNMENT_FAMILIES if _layers(history, f.key)]
    if not families:
        fig = _new_figure(5.5, 3.8, title)
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no alignment metrics", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ncols = min(len(families), 2)
    nrows = math.ceil(len(families) / ncols)
    fig = _new_figure(5.0 * ncols, 3.6 * nrows, title)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _layer_colors(history)
    for ax, family in zip(axes, families, strict=False):
        _alignment_panel(ax, history, family, colors,
                         len(history) if n_points is None else n_points)
    for ax in axes[len(families):]:
        fig.delaxes(ax)
    return fig


def digit_handles(labels) -> list[Line2D]:
    """Legend entries of the digits in ``labels``, in the colours ``draw_latent`` uses."""
    cmap = matplotlib.colormaps["tab10"]
    return [Line2D([], [], linestyle="", marker="o", color=cmap(d % 10), label=str(d))
            for d in np.unique(np.asarray(labels).astype(int))]


def draw_latent(ax, codes: np.ndarray, labels: np.ndarray, size: float = 8) -> None:
    """The 2-D codes on ``ax`` as points coloured by digit (tab10)."""
    codes, labels = np.asarray(codes, dtype=float), np.asarray(labels).astype(int).ravel()
    if codes.ndim != 2 or codes.shape[1] != 2:
        raise ValueError(f"codes must have shape (n, 2), got {codes.shape}")
    if len(labels) != len(codes):
        raise ValueError(f"{len(codes)} codes but {len(labels)} labels")
    cmap = matplotlib.colormaps["tab10"]
    # One collection in data order, so no digit is systematically drawn on top.
    ax.scatter(codes[:, 0], codes[:, 1], c=cmap(labels % 10), s=size, alpha=0.7, linewidths=0)
    ax.set_xlabel("code 1")
    ax.set_ylabel("code 2")


def latent_scatter(codes: np.ndarray, labels: np.ndarray, title: str | None = None) -> Figure:
    """The 2-D codes as points coloured by digit (tab10), with a legend of the digits."""
    fig = _new_figure(6.5, 5.5, title)
    fig.subplots_adjust(right=1 - 0.9 / 6.5)  # room for the digit legend on the right
    ax = fig.add_subplot()
    draw_latent(ax, codes, labels)
    ax.legend(handles=digit_handles(labels), title="digit", loc="center left",
              bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    ax.grid(alpha=0.3)
    return fig


def draw_digit(ax, image: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> None:
    """One flat square image on ``ax``, grey, without ticks."""
    image = np.asarray(image, dtype=float).ravel()
    side = _image_side(image.size)
    ax.imshow(image.reshape(side, side), cmap="gray", vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])


def _image_side(n_pixels: int) -> int:
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise ValueError(f"images of {n_pixels} pixels are not square")
    return side


def reconstructions(
    originals: np.ndarray, reconstructions: np.ndarray, title: str | None = None
) -> Figure:
    """Originals (top row) over their reconstructions (bottom row), grey, same scale."""
    top = np.asarray(originals, dtype=float)
    bottom = np.asarray(reconstructions, dtype=float)
    top, bottom = top.reshape(len(top), -1), bottom.reshape(len(bottom), -1)
    if top.shape != bottom.shape or len(top) == 0:
        raise ValueError(f"need as many originals as reconstructions (>0), got "
                         f"{top.shape} and {bottom.shape}")
    _image_side(top.shape[1])  # a square image, or a clear error
    vmin, vmax = np.nanmin(top), np.nanmax(top)  # the originals' range, shared by both rows
    n = len(top)
    fig = _new_figure(max(1.2 * n, 4.0), 3.0, title)
    axes = fig.subplots(2, n, squeeze=False)
    for row, (images, name) in enumerate([(top, "original"), (bottom, "reconstruction")]):
        for col in range(n):
            draw_digit(axes[row, col], images[col], vmin, vmax)
        axes[row, 0].set_ylabel(name)
    return fig


def trial_figures(
    history: History,
    *,
    codes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    originals: np.ndarray | None = None,
    recon: np.ndarray | None = None,
    title: str | None = None,
) -> dict[str, Figure]:
    """The figures of one trial, keyed by file name; the autoencoder's when given its data."""
    return {"learning_curves.png": learning_curves(history, title),
            "alignment.png": alignment_curves(history, title),
            **autoencoder_figures(codes=codes, labels=labels, originals=originals,
                                  recon=recon, title=title)}


def autoencoder_figures(
    *,
    codes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    originals: np.ndarray | None = None,
    recon: np.ndarray | None = None,
    title: str | None = None,
) -> dict[str, Figure]:
    """The autoencoder's figures of a trial, keyed by file name, for the data given."""
    if (codes is None) != (labels is None):
        raise ValueError("codes and labels go together")
    if (originals is None) != (recon is None):
        raise ValueError("originals and recon go together")
    figures = {}
    if codes is not None:
        figures["latent.png"] = latent_scatter(codes, labels, title)
    if originals is not None:
        figures["reconstructions.png"] = reconstructions(originals, recon, title)
    return figures


class CurveSheets:
    """The learning-curve and alignment figures of several runs of one experiment, drawn
    once and redrawn per run: what a population's members log (one figure each would
    cost ~0.2 s of layout and tick text per figure and member; here a member costs its
    lines and title, and the PNG's encoding).

    The figures look like ``learning_curves`` and ``alignment_curves`` of one run, with
    the axes of every run in common (the runs' union of data sets the limits, and the
    legends' places), so that members of one population compare at a glance. Everything
    but the lines and title is drawn once (Agg's blitting: ``copy_from_bbox`` and
    ``restore_region``); the legends' pixels are laid back over each run's lines.
    """

    NAMES = ("learning_curves.png", "alignment.png")

    def __init__(self, histories: Sequence[History], dpi: int = DPI):
        union = [record for history in histories for record in history]
        n_points = max((len(h) for h in histories), default=0)
        self.dpi = dpi
        self._sheets = []
        for name, make in zip(self.NAMES, (learning_curves, alignment_curves), strict=True):
            fig = make(union, title=" ", n_points=n_points)  # " ": the title's room
            fig.set_dpi(dpi)
            title = fig.suptitle(" ")
            lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid()]
            legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
            for ax in fig.axes:  # the union's limits stay when the lines are redrawn
                ax.get_xlim(), ax.get_ylim()  # (settles the limits autoscaling put off)
                ax.set_autoscale_on(False)
            for artist in (*lines, title):
                artist.set_animated(True)  # left out of the background
            canvas = FigureCanvasAgg(fig)
            canvas.draw()  # the legends' best places: against the union's lines
            boxes = [canvas.copy_from_bbox(legend.get_window_extent()) for legend in legends]
            self._sheets.append((name, fig, canvas, lines, boxes, title,
                                 canvas.copy_from_bbox(fig.bbox)))

    @property
    def figures(self) -> dict[str, Figure]:
        return {sheet[0]: sheet[1] for sheet in self._sheets}

    def render(self, history: History, title: str | None = None) -> dict[str, bytes]:
        """The PNGs of one run, by file name (as ``trial_figures`` names them)."""
        epochs = _epochs(history)
        out = {}
        for name, fig, canvas, lines, legends, heading, background in self._sheets:
            canvas.restore_region(background)
            for line in lines:
                key = line.get_gid()
                line.set_data(epochs, _series(history, key, _SCALES.get(key, 1.0)))
                line.axes.draw_artist(line)
            for box in legends:  # on top of the lines, as drawn
                canvas.restore_region(box)
            heading.set_text(title or "")
            fig.draw_artist(heading)
            width, height = canvas.get_width_height()
            image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(),
                                     "raw", "RGBA", 0, 1)
            buffer = io.BytesIO()
            image.save(buffer, format="png", compress_level=1)
            out[name] = buffer.getvalue()
        return out


def save_figures(
    figures: Mapping[str, Figure], directory: str | os.PathLike, dpi: int = DPI
) -> list[Path]:
    """Write each figure as ``directory/<name>`` (PNG; '.png' added if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        if not name or Path(name).name != name:
            raise ValueError(f"figure name {name!r} must be a plain file name")
        path = directory / (name if name.endswith(".png") else name + ".png")
        fig.savefig(path, dpi=dpi, format="png")
        paths.append(path)
    return paths
