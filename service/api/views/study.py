"""What a study's page shows, and what the comparison of two to four studies shows: read
from the study's row (``to_public``, ``queries.current_best``) and its trials as the sync
stored them (``lifecycle.study_trials``); the points are ``service.records.series``'."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from service.api import lifecycle, queries
from service.api.principals import Principal
from service.api.routes.studies import to_public
from service.api.schemas import StudyPublic
from service.api.services import Services
from service.api.views.charts import PALETTE, Chart, Series, chart
from service.records import series
from service.text import number

#: How often a page of a study that runs fetches it again (ms); none once it ended.
REFRESH_MS = 2000


@dataclass
class StudyData:
    """One study as its page and a comparison read it."""

    public: StudyPublic
    trials: list[dict[str, Any]]
    objectives: list[dict[str, str]]
    axes: list[series.Axis]
    final: tuple[float, float, int] | None
    active: bool

    @property
    def metric(self) -> str:
        """The first objective's metric: the one of its value, its curve and Tune's rank."""
        return self.objectives[0]["metric"]

    @property
    def mode(self) -> str:
        return self.objectives[0].get("mode", "min")

    @property
    def several(self) -> bool:
        """Several objectives: no single best, but a Pareto front (:attr:`pareto`)."""
        return len(self.objectives) > 1

    @property
    def goals(self) -> str:
        """Every objective as people read it: ``test_error (min), angle/fc2 (min)``."""
        return ", ".join(f"{o['metric']} ({o.get('mode', 'min')})" for o in self.objectives)

    def values(self, trial: dict[str, Any]) -> list[Any]:
        """``trial``'s value of each objective, in order (None where it has none)."""
        raw = trial.get("values") or {}
        if not isinstance(raw, dict):  # a list, in the objectives' order
            raw = dict(zip((o["metric"] for o in self.objectives), raw, strict=False))
        return [raw.get(o["metric"]) for o in self.objectives]

    @cached_property
    def pareto(self) -> tuple[list[tuple[int, list[float]]],
                              list[tuple[int, list[float]]]] | None:
        """``(front, the others)`` of a study of several objectives (``series.pareto``);
        None for one objective."""
        return series.pareto(self.trials, self.objectives) if self.several else None

    @property
    def curve(self) -> list[tuple[int, float, float]]:
        return series.best_so_far(self.trials, self.mode)


def load(svc: Services, ref: str, principal: Principal) -> StudyData:
    """Study ``ref`` (id or name), if ``principal`` may see it (else ``StudyNotFound``)."""
    record = queries.get_study(svc, ref, principal)
    best = queries.current_best(record)
    objectives = series.objectives_of(record.spec)
    return StudyData(
        public=to_public(svc, record, principal),
        trials=lifecycle.study_trials(svc, record.id, principal),
        objectives=objectives, axes=series.axes_of(svc.spec_of(record).search_space()),
        final=series.final_seeds((best or {}).get("final_evaluation"),
                                 objectives[0]["metric"]),
        active=record.active)


def _title(trial: dict[str, Any], metric: str) -> str:
    params = ", ".join(f"{k}={number(v)}" for k, v in sorted(trial["params"].items()))
    return f"trial {trial['number']}: {metric} = {number(trial['value'])} ({params})"


def best_so_far_chart(d: StudyData) -> Chart:
    """Every complete trial's value (grey) and the best so far (a blue staircase)."""
    by_number = {t["number"]: t for t in series.complete(d.trials)}
    curve = d.curve
    return chart("best-so-far", "trial", d.metric, [
        Series("trial", [(n, v, _title(by_number[n], d.metric), n) for n, v, _ in curve],
               cls="trial", color="#9aa5b1"),
        Series("best so far", [(n, b, f"best after trial {n}: {number(b)}", n)
                               for n, _, b in curve], cls="best", line=True, step=True,
               dots=False)])


def param_charts(d: StudyData) -> list[Chart]:
    """The objective against each searched parameter (log x where the space is log), the
    best trial marked (none with several objectives: there is no single best)."""
    by_number = {t["number"]: t for t in series.complete(d.trials)}
    best = None if d.several else series.best_value(d.trials, d.mode)
    out = []
    for axis in d.axes:
        points = series.param_points(d.trials, axis.name)
        out.append(chart(
            f"param-{axis.name}", axis.name + (" (log)" if axis.log else ""), d.metric,
            [Series(axis.name, [(x, y, _title(by_number[n], d.metric), n)
                                for x, y, n in points if y != best]),
             Series("best", [(x, y, _title(by_number[n], d.metric), n)
                             for x, y, n in points if y == best], cls="best-trial",
                    color=PALETTE[1])],
            log_x=axis.log, x_range=(axis.low, axis.high), categories=axis.choices,
            width=340, height=230))
    return out


def pareto_section(d: StudyData) -> dict[str, Any] | None:
    """For a study of several objectives: its Pareto front (from the trials' ``values``)
    as a table and a plot of the first two objectives; None for one objective."""
    if d.pareto is None:
        return None
    front, others = d.pareto
    x, y = d.objectives[0]["metric"], d.objectives[1]["metric"]

    def points(rows):
        return [(v[0], v[1], f"trial {n}: {x} = {number(v[0])}, {y} = {number(v[1])}", n)
                for n, v in rows]

    return {"front": front, "others": len(others), "chart": chart(
        "pareto", x, y, [Series("dominated", points(others), color="#9aa5b1"),
                         Series("Pareto front", points(sorted(front, key=lambda r: r[1])),
                                cls="front", color=PALETTE[1], line=True)],
        empty="no complete trial with every objective's value yet")}


#: Trials in one page of a study's table (``?offset=`` pages on; the plots show all).
PAGE_TRIALS = 200


def pager(offset: int, total: int) -> dict[str, Any] | None:
    """Where the table's page lies (first and last shown, the offsets before and after),
    or None when one page holds every trial."""
    if total <= PAGE_TRIALS and offset == 0:
        return None
    last = min(total, offset + PAGE_TRIALS)
    return {"first": offset + 1, "last": last, "total": total,
            "before": max(0, offset - PAGE_TRIALS) if offset else None,
            "after": offset + PAGE_TRIALS if last < total else None}


def study_context(svc: Services, ref: str, principal: Principal,
                  offset: int = 0) -> dict[str, Any]:
    """Everything ``study.html`` shows (its table: ``PAGE_TRIALS`` trials from ``offset``)."""
    d = load(svc, ref, principal)
    names = [a.name for a in d.axes] or sorted({k for t in d.trials for k in t["params"]})
    ordered = sorted(d.trials, key=lambda t: t["number"])
    return {"s": d.public, "d": d, "names": names, "trials": ordered,
            "shown": ordered[offset:offset + PAGE_TRIALS],
            "pager": pager(offset, len(ordered)),
            "n_complete": len(series.complete(d.trials)), "curve": best_so_far_chart(d),
            "param_charts": param_charts(d), "pareto": pareto_section(d),
            "refresh_ms": REFRESH_MS if d.active else None}


def compare_context(svc: Services, refs: list[str], principal: Principal) -> dict[str, Any]:
    """Everything ``compare.html`` shows: the studies' best-so-far curves overlaid, and
    their best configurations side by side."""
    studies = [load(svc, ref, principal) for ref in refs]
    overlay = chart("compare-best-so-far", "trial",
                    " / ".join(dict.fromkeys(d.metric for d in studies)), [
                        Series(d.public.name, [(n, b, f"{d.public.name}, after trial {n}: "
                                               f"{number(b)}", n) for n, _, b in d.curve],
                               cls=f"study-{i}", color=PALETTE[i % len(PALETTE)], line=True,
                               step=True)
                        for i, d in enumerate(studies)], width=760, height=320)
    names = sorted({k for d in studies if d.public.best for k in d.public.best.params})
    return {"studies": studies, "overlay": overlay, "names": names,
            "colors": [PALETTE[i % len(PALETTE)] for i in range(len(studies))],
            "same_objective": len({(d.metric, d.mode) for d in studies}) == 1,
            "refresh_ms": REFRESH_MS if any(d.active for d in studies) else None}
