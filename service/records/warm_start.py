"""A new study's Optuna study, seeded before its first trial: the COMPLETE trials of
earlier studies (``warm_start``) added to it in the new space's distributions, so its
sampler learns from them, and the configurations given by hand (``enqueue``) queued to
be tried first.

A warm-started trial carries ``WARM_START_ATTR`` (``"<study>#<trial number>"``): it
informs the sampler, but it is not one of the study's own trials: it does not count
against ``max_trials``, in the study's counts, its trials, its best or its Pareto front
(``own_trials``). A trial of an earlier study fits when its parameters are exactly the
new space's and each value lies inside the new ranges or choices, and the values of the
new study's objectives are known (the earlier study's own objectives, or the last
metrics its trial reported: ``METRICS_ATTR``); one that does not fit is named in a
``StudyProblems``, never dropped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import optuna

from service.spec import StudyProblems, StudySpec
from trainables.layers import LAYER_METRICS

#: The Optuna user attribute of a trial copied from an earlier study: where it came from.
WARM_START_ATTR = "credit.warm_start_from"
#: The Optuna user attribute holding the last metrics a trial reported ({name: value}).
METRICS_ATTR = "credit.metrics"
#: Metrics every trial reports besides the per-layer ones (``<family>/<layer>``).
_PLAIN_METRICS = ("test_error", "train_loss", "test_loss")
#: The NSGA-II sampler's generation attribute: warm trials are its first generation.
_NSGA2_GENERATION = f"{optuna.samplers.NSGAIISampler.__name__}:generation"


def is_own(trial: Any) -> bool:
    """Whether an Optuna trial is the study's own (not copied by a warm start)."""
    return WARM_START_ATTR not in trial.user_attrs


def own_trials(trials: Iterable[Any]) -> list[Any]:
    """The study's own trials among ``trials`` (warm-started ones left out)."""
    return [t for t in trials if is_own(t)]


def reported_metrics(result: dict[str, Any] | None) -> dict[str, float]:
    """The learning metrics of a trial's last result (not Tune's bookkeeping), finite."""
    out: dict[str, float] = {}
    for key, value in (result or {}).items():
        if (key in _PLAIN_METRICS or key.split("/")[0] in LAYER_METRICS) \
                and isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value):
            out[key] = float(value)
    return out


def objective_values(trial: Any, metric_names: list[str] | None,
                     metrics: list[str]) -> list[float | None]:
    """The values of ``metrics`` for a COMPLETE trial: from its study's own objective
    values (``metric_names`` in order), else from the metrics it reported."""
    reported = trial.user_attrs.get(METRICS_ATTR) or {}
    out: list[float | None] = []
    for metric in metrics:
        if metric_names and metric in metric_names and trial.values is not None:
            out.append(trial.values[metric_names.index(metric)])
        else:
            value = reported.get(metric)
            out.append(float(value) if isinstance(value, int | float) else None)
    return out


def _misfit(trial: Any, spec: StudySpec, values: list[float | None]) -> str | None:
    """Why an earlier study's trial does not fit ``spec``'s space and objectives."""
    params = spec.search_space().params
    extra = sorted(set(trial.params) - set(params))
    missing = sorted(set(params) - set(trial.params))
    if extra or missing:
        return "; ".join(
            ([f"params {', '.join(extra)} are not in the new space"] if extra else [])
            + ([f"params {', '.join(missing)} are missing"] if missing else []))
    for name, value in trial.params.items():
        if not params[name].contains(value):
            bounds = ", ".join(f"{k}={v!r}" for k, v in params[name].extremes())
            return f"param {name}={value!r} is outside the new space ({bounds})"
    lacking = [o.metric for o, v in zip(spec.objectives, values, strict=True)
               if v is None or not math.isfinite(v)]
    if lacking:
        return f"no value of objective {', '.join(lacking)}"
    return None


def warm_trials(spec: StudySpec, storage: Any) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE own trials of ``spec.warm_start``'s studies, as trials of the new
    study (its distributions and objectives); ``StudyProblems`` naming every study that
    does not exist or has no complete trial, and every trial that does not fit."""
    distributions = spec.search_space().to_optuna()
    metrics = [o.metric for o in spec.objectives]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    out = []
    for i, name in enumerate(spec.warm_start):
        try:
            earlier = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            problems.append((("warm_start", i), f"no study named {name!r}"))
            continue
        complete = own_trials(earlier.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if not complete:
            problems.append((("warm_start", i), f"study {name!r} has no complete trial"))
        for t in complete:
            values = objective_values(t, earlier.metric_names, metrics)
            why = _misfit(t, spec, values)
            if why is not None:
                problems.append((("warm_start", i), f"study {name!r} trial {t.number}: {why}"))
                continue
            out.append(optuna.trial.create_trial(
                params=dict(t.params),
                distributions={k: distributions[k] for k in t.params},
                values=values, state=optuna.trial.TrialState.COMPLETE,
                user_attrs={WARM_START_ATTR: f"{name}#{t.number}",
                            METRICS_ATTR: t.user_attrs.get(METRICS_ATTR) or {}},
                system_attrs={_NSGA2_GENERATION: 0} if spec.sampler == "nsga2" else {}))
    if problems:
        raise StudyProblems(problems)
    return out


def directions(spec: StudySpec) -> list[str]:
    """Optuna's direction of each of the study's objectives."""
    return ["minimize" if o.mode == "min" else "maximize" for o in spec.objectives]


def seed_study(spec: StudySpec, storage: Any,
               warm: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    """The study's Optuna study, created with its objectives (directions and metric
    names); a new one (no trials yet) gets the ``warm`` trials and ``spec.enqueue``."""
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                directions=directions(spec))
    if study.get_trials(deepcopy=False):
        return study
    with warnings.catch_warnings():  # experimental in Optuna 5, the study's own record
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.objectives])
    study.add_trials(warm)
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=False)
    return study
