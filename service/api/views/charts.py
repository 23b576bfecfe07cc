"""Plots as inline SVG, drawn on the server: the geometry of a chart (its axes, ticks and
points in pixels) for the ``_chart.html`` template. No script draws them, so a page
shows them offline and a test reads them in the DOM (one ``<circle>`` per point, with
its trial in ``data-trial``). Ticks come from matplotlib's locators; a log axis (a
parameter the space draws log-uniformly) places its points by their logarithm."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.ticker import LogLocator, MaxNLocator

from service.text import number

WIDTH, HEIGHT = 460, 260
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 14, 42
PALETTE = ("#0b57d0", "#b00020", "#176e2b", "#a05a00")


@dataclass
class Series:
    """Points ``(x, y, title, trial)`` of one kind: drawn as circles of ``cls``, joined by
    a line (``step``: a staircase, as a best-so-far curve) when ``line`` is set."""

    name: str
    points: list[tuple[Any, float, str, int | None]]
    cls: str = "trial"
    color: str = PALETTE[0]
    line: bool = False
    step: bool = False
    dots: bool = True


@dataclass
class Scale:
    """Data ``lo..hi`` → pixels ``a..b`` (``log``: by the logarithm)."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def __call__(self, v: float) -> float:
        f = (lambda x: math.log10(x)) if self.log else (lambda x: x)
        span = f(self.hi) - f(self.lo)
        return round(self.a + (f(v) - f(self.lo)) / span * (self.b - self.a), 1)


@dataclass
class Chart:
    """What ``_chart.html`` draws."""

    id: str
    x_label: str
    y_label: str
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    empty: str = ""
    log_x: bool = False

    @property
    def plot(self) -> tuple[int, int, int, int]:
        """The plotting area: left, top, right, bottom (pixels)."""
        return LEFT, TOP, self.width - RIGHT, self.height - BOTTOM

    @property
    def points(self) -> int:
        return sum(len(s["points"]) for s in self.series if s["dots"])


def _range(values: list[float], log: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        lo, hi = max(lo, 1e-300), max(hi, 1e-300)
        return (lo / 2, hi * 2) if lo == hi else (lo, hi)
    if lo == hi:
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def ticks(lo: float, hi: float, log: bool, integer: bool = False) -> list[float]:
    """Tick values inside ``lo..hi``: powers of ten on a log axis (when at least two fall
    inside), else about five round numbers."""
    if log:
        found = [t for t in LogLocator(base=10).tick_values(lo, hi) if lo <= t <= hi]
        if len(found) >= 2:
            return list(found)
        logs = [t for t in MaxNLocator(4).tick_values(math.log10(lo), math.log10(hi))
                if math.log10(lo) <= t <= math.log10(hi)]
        return [10 ** t for t in logs]
    return [t for t in MaxNLocator(5, integer=integer).tick_values(lo, hi) if lo <= t <= hi]


def chart(id: str, x_label: str, y_label: str, series: list[Series], *, log_x: bool = False,
          x_range: tuple[float, float] | None = None, categories: tuple[Any, ...] | None = None,
          width: int = WIDTH, height: int = HEIGHT, empty: str = "no complete trial yet"
          ) -> Chart:
    """A chart of ``series``; x is numeric (``x_range``: its limits, else the data's),
    log (``log_x``) or one of ``categories``."""
    out = Chart(id, x_label, y_label, width=width, height=height, log_x=log_x)
    left, top, right, bottom = out.plot
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    if not ys:
        out.empty = empty
        return out
    if categories:
        index = {c: i for i, c in enumerate(categories)}
        sx = Scale(-0.5, len(categories) - 0.5, left, right)
        to_x = lambda v: sx(index.get(v, -0.5))  # noqa: E731
        out.x_ticks = [(sx(i), str(c)) for i, c in enumerate(categories)]
    else:
        lo, hi = x_range if x_range and None not in x_range else _range(xs, log_x)
        lo, hi = min(lo, *xs), max(hi, *xs)
        if lo == hi:
            lo, hi = _range([lo], log_x)
        sx = Scale(lo, hi, left, right, log_x)
        to_x = sx
        integer = all(isinstance(x, int) for x in xs)  # trial numbers
        out.x_ticks = [(sx(t), number(float(t), ".3g"))
                       for t in ticks(lo, hi, log_x, integer)]
    y_lo, y_hi = _range(ys, False)
    sy = Scale(y_lo, y_hi, bottom, top)
    out.y_ticks = [(sy(t), number(float(t), ".3g")) for t in ticks(y_lo, y_hi, False)]
    for s in series:
        pixels = [(to_x(x), sy(y), title, trial) for x, y, title, trial in s.points]
        path = ""
        if s.line and pixels:
            path = f"M{pixels[0][0]},{pixels[0][1]}"
            for x1, y1, _, _ in pixels[1:]:
                path += f" H{x1} V{y1}" if s.step else f" L{x1},{y1}"
            if s.step:
                path += f" H{right}"
        out.series.append({"name": s.name, "cls": s.cls, "color": s.color, "dots": s.dots,
                           "points": pixels, "path": path})
    return out
