"""A submitted study checked against the server: the space resolved (presets or inline,
never a server path), the full ``StudySpec`` built, its metric and resources checked."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from search_spaces import SearchSpace, SearchSpaceError, load_space, parse_space, preset_names
from service.api.errors import (
    BackendUnavailable,
    Loc,
    StudyRejected,
)
from service.api.services import Services
from service.jobs import JobError
from service.spec import SERVER_FIELDS, SpecProblems, StudySpec, metrics_of
from trainables.config import DATASET_NAMES
from trainables.experiments import EXPERIMENTS
from trainables.validation import error_phrase

# --------------------------------------------------------------------- validation
#: What a client may send: the StudySpec fields the server does not own.
CREATE_FIELDS = tuple(f for f in StudySpec.model_fields if f not in SERVER_FIELDS)


def _space_loc(where: str) -> Loc:
    return ("space", *[p for p in where.split(".") if p]) if where else ("space",)


def resolve_space(space: Any) -> SearchSpace:
    """A preset by name, or an inline space; never a file (clients name no server paths)."""
    if isinstance(space, str):
        if space not in preset_names():
            reason = f"unknown preset {space!r}; valid: {', '.join(preset_names())}"
            if "/" in space or "\\" in space or space.endswith(".json") or ".." in space:
                reason = ("must be a preset name or an inline search space; files cannot be "
                          f"named over HTTP (valid presets: {', '.join(preset_names())})")
            raise StudyRejected([(("space",), reason)])
        return load_space(space)
    try:
        return parse_space(space)
    except SearchSpaceError as error:
        raise StudyRejected([(_space_loc(where), reason)
                             for where, reason in error.problems]) from None


def build_spec(svc: Services, body: Any) -> StudySpec:
    """The full ``StudySpec`` of a submitted ``StudyCreate``, with the server's stores.

    Raises ``StudyRejected`` naming each offending field (shape errors are caught
    before, by the request model), ``BackendUnavailable`` if the cluster cannot say
    what it holds.
    """
    settings = svc.settings
    fields = body.model_dump(exclude_unset=False)
    space = resolve_space(fields.pop("space"))
    problems: list[tuple[Loc, str]] = []
    if body.objective is not None and body.objectives is not None:
        problems.append((("objectives",), "give either objective (one) or objectives "
                                          "(several), not both"))
        fields["objective"] = None
    if body.max_trials > settings.max_trials_per_study:
        problems.append((("max_trials",), (
            f"must be <= {settings.max_trials_per_study}, this server's limit per study "
            f"(got {body.max_trials})")))
    experiment = EXPERIMENTS.get(space.experiment)
    if body.dataset is not None and body.dataset not in experiment.datasets:
        known = body.dataset in DATASET_NAMES
        problems.append((("dataset",), (
            f"{'dataset' if known else 'unknown dataset'} {body.dataset!r} "
            f"{'does not fit' if known else 'for'} experiment {space.experiment!r}; valid: "
            f"{', '.join(experiment.datasets)}")))
        fields["dataset"] = None
    try:
        spec = StudySpec(**fields, space=space, tracking_uri=settings.mlflow_tracking_uri,
                         storage=settings.optuna_storage,
                         experiment_name=settings.experiment_name)
    except ValidationError as error:
        problems += _spec_problems(error)
        spec = None
    if spec is not None:
        valid = metrics_of(space.experiment)
        if spec.objective.metric not in valid:
            where = ("objective", "metric") if body.objective is not None else \
                ("space", "objective", "metric")
            problems.append((where, f"unknown metric {spec.objective.metric!r} for experiment "
                                    f"{space.experiment!r}; valid: {', '.join(valid)}"))
    if problems:
        raise StudyRejected(problems)
    problems += _resource_problems(svc, spec)
    if problems:
        raise StudyRejected(problems)
    return spec


def _spec_problems(error: ValidationError) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for e in error.errors():
        loc = tuple(e.get("loc", ()))
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, SpecProblems):
            problems += [(tuple(where), reason) for where, reason in inner.problems]
        elif isinstance(inner, SearchSpaceError):
            for where, reason in inner.problems:
                head = where.split(".")[0] if where else ""
                if loc:
                    problems.append((loc + tuple(p for p in where.split(".") if p), reason))
                elif head in CREATE_FIELDS:  # a study setting the space's config rejects
                    problems.append((tuple(where.split(".")), reason))
                else:
                    problems.append((_space_loc(where), reason))
        else:
            problems.append((loc or ("space",), error_phrase(e)))
    return problems


def _resource_problems(svc: Services, spec: StudySpec) -> list[tuple[Loc, str]]:
    try:
        nodes = svc.cluster_nodes()
    except JobError as error:
        raise BackendUnavailable(str(error)) from None
    problems: list[tuple[Loc, str]] = []
    for key, name in (("gpu", "GPU"), ("cpu", "CPU")):
        wanted = getattr(spec.resources, key)
        most = max((n.resources.get(name, 0.0) for n in nodes), default=0.0)
        if wanted > most:
            reason = (f"the cluster has no {name}" if most == 0 else
                      f"no node of the cluster has {wanted:g} {name}s (the most is {most:g})")
            problems.append((("resources", key), f"{reason}; a trial asking for {wanted:g} "
                                                  "would never start"))
    for key, wanted in spec.resources.custom.items():
        most = max((n.resources.get(key, 0.0) for n in nodes), default=0.0)
        if wanted > most:
            problems.append((("resources", "custom", key),
                             f"no node of the cluster has {wanted:g} of resource {key!r} "
                             f"(the most is {most:g}); a trial asking for it would never start"))
    return problems
