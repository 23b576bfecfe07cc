"""Request and response bodies: Create / Public pairs, and ``{data, count}`` lists.

``StudyCreate`` is ``service.spec.StudySpec`` less the fields the server owns
(where MLflow and Optuna keep their records, the data directory, the experiment,
campaign nesting and extra tags): clients choose what to search, never server paths.
Its fields, bounds and defaults come from ``StudySpec`` itself, so the CLI, the
runner and the API share one schema.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, field_validator

from service.spec import SERVER_FIELDS, STUDY_NAME, StudySpec
from service.trials import COUNT_KEYS

StudyStatus = Literal["QUEUED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]

_EXAMPLE = {
    "name": "np-mnist-5k",
    "space": "mnist-fc-node-perturbation",
    "sampler": "random",
    "seed": 0,
    "max_trials": 8,
    "parallel_trials": 2,
    "epochs": 3,
    "dataset": "mnist-5k",
}


def _study_create_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in StudySpec.model_fields.items():
        if name in SERVER_FIELDS:
            continue
        fields[name] = (info.annotation, info)
    fields["name"] = (str, Field(
        ..., min_length=1, max_length=64, pattern=STUDY_NAME.pattern,
        description="unique study name: 1-64 lowercase letters, digits, '.', '_', '-'"))
    fields["space"] = (Annotated[Any, WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "object"}]})], Field(
        ..., description="a preset name (GET /search-spaces) or an inline search space "
                         "(the search-space schema: name, experiment, rule, fixed, params)"))
    return fields


def _space_kind(value: Any) -> Any:
    if isinstance(value, str) and 0 < len(value) <= 200 or isinstance(value, dict):
        return value
    raise ValueError("must be a preset name (a string) or an inline search space (an object)")


StudyCreate = create_model(
    "StudyCreate",
    # strict: no coercion of booleans or strings into numbers (``"epochs": "1"`` is an
    # error, not 1)
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False, strict=True,
                          json_schema_extra={"examples": [_EXAMPLE]}),
    __doc__="A study to run: what to search, how, and for how long.",
    __validators__={"_space_kind": field_validator("space")(_space_kind)},
    **_study_create_fields(),
)


class Links(BaseModel):
    self: str
    mlflow: str | None = Field(
        None, description="MLflow UI: the runs table filtered to the study's runs, best first")
    mlflow_parent_run: str | None = Field(
        None, description="MLflow UI page of the study's parent run")
    optuna: str | None = Field(
        None, description="Optuna dashboard page of the study (importances, contours)")


#: How many trials are in each state (``service.trials.COUNT_KEYS``).
TrialCounts = create_model("TrialCounts", **{state: (int, 0) for state in COUNT_KEYS})


class BestSoFar(BaseModel):
    value: float
    params: dict[str, Any]
    trial_id: str | None = None


class StudyPublic(BaseModel):
    """A study as the service knows it now."""

    id: str
    name: str
    status: StudyStatus = Field(
        description="QUEUED (waiting for a free slot of the server, see `queue_position`), "
                    "PENDING, RUNNING, then SUCCEEDED, FAILED or CANCELLED")
    queue_position: int | None = Field(
        None, ge=1, description="while QUEUED, its place in the server's fair queue (1: "
                                "it starts next); null otherwise")
    message: str = Field(
        "", description="why the study ended as it did, a pending cancel, or, while it "
                        "waits, why (\"queued: ...\", \"waiting for resources: ...\")")
    space: str
    sampler: str
    objective: dict[str, str] = Field(
        description="the objective; with several, the first (the one Ray Tune ranks by)")
    objectives: list[dict[str, str]] = Field(
        default_factory=list, description="every objective; several: see `/pareto`")
    max_trials: int
    population: int | str = Field(
        1, description="configurations trained together per Ray trial (each its own trial)")
    parallel_trials: int
    counts: TrialCounts
    restarts: int = Field(
        0, ge=0, description="restarts of the study's trials after infrastructure failures "
                             "(a node died, storage failed), in all: each trial's `restarts`")
    best: BestSoFar | None = None
    job_id: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    spec: dict[str, Any] = Field(description="the study as submitted, defaults filled in")
    created_at: dt.datetime
    started_at: dt.datetime | None = Field(
        None, description="when it left the queue: its Ray job submitted (null while QUEUED)")
    updated_at: dt.datetime
    links: Links


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int = Field(description="studies matching the filter, on all pages")


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    """In UTC, with its offset. A naive time is Optuna's (local time), as rows stored it
    before the sync wrote offsets."""
    return None if when is None else when.astimezone(dt.UTC)


class TrialPublic(BaseModel):
    """A trial; its times are ISO 8601 in UTC, with the offset (``Z``)."""

    number: int
    trial_id: str | None = Field(None, description="Ray Tune trial id")
    state: Literal["COMPLETE", "RUNNING", "FAILED", "PRUNED", "PENDING"]
    params: dict[str, Any]
    value: float | None = Field(None, description="COMPLETE: the (first) objective's value")
    values: dict[str, float] | None = Field(
        None, description="COMPLETE: each objective's value, by metric")
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    failure: str | None = Field(
        None, description="why a FAILED trial failed: exception type and whole message")
    failure_kind: Literal["infrastructure", "trial"] | None = Field(
        None, description="infrastructure (storage, tracking, a dead node) or trial "
                          "(the configuration itself failed, e.g. diverged)")
    restarts: int = Field(
        0, ge=0, description="how many times the trial was restarted from its last "
                             "checkpoint after an infrastructure failure (at most the "
                             "study's `max_trial_restarts`)")

    _aware = field_validator("started_at", "completed_at")(_utc)


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int = Field(description="the study's trials, on all pages")


class BestPublic(BaseModel):
    """The best configuration found so far (final once the study has ended)."""

    study_id: str
    status: StudyStatus
    final: bool = Field(description="the study has ended: this is its result")
    metric: str
    mode: str
    value: float
    params: dict[str, Any]
    config: dict[str, Any] = Field(description="the full TrainConfig of the best trial")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="the last metrics of the best trial's MLflow run")
    trial_id: str | None = None
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    final_evaluation: dict[str, float] | None = None


class ParetoTrialPublic(BaseModel):
    """A trial of the Pareto front: no other COMPLETE trial is as good in every objective
    and better in one."""

    number: int = Field(description="Optuna trial number")
    trial_id: str | None = Field(None, description="Ray Tune trial id")
    params: dict[str, Any]
    values: dict[str, float] = Field(description="each objective's value, by metric")
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None


class ParetoPublic(BaseModel):
    """The Pareto front of a study with several objectives (final once it has ended)."""

    study_id: str
    status: StudyStatus
    final: bool = Field(description="the study has ended: this is its result")
    objectives: list[dict[str, str]]
    complete_trials: int = Field(description="COMPLETE trials the front is taken from")
    data: list[ParetoTrialPublic]
    count: int


class SearchSpaceSummary(BaseModel):
    name: str
    description: str
    experiment: str
    rule: str
    params: list[str]


class SearchSpacesPublic(BaseModel):
    data: list[SearchSpaceSummary]
    count: int


class ExperimentPublic(BaseModel):
    name: str
    description: str
    classification: bool
    datasets: list[str]
    default_dataset: str


class NamedDescription(BaseModel):
    name: str
    description: str


class CatalogPublic(BaseModel):
    """What a study may name: networks, learning rules and datasets."""

    experiments: list[ExperimentPublic]
    rules: list[NamedDescription]
    datasets: list[NamedDescription]


class CheckPublic(BaseModel):
    ok: bool
    detail: str = ""


class HealthPublic(BaseModel):
    """The verdict; ``checks`` and ``mlflow_ui_url`` only for a caller with a valid token."""

    status: Literal["ok", "degraded"]
    checks: dict[str, CheckPublic] | None = Field(
        None, description="each dependency: ok, and its address or error (with a token)")
    mlflow_ui_url: str | None = Field(None, description="the MLflow UI (with a token)")


class LivePublic(BaseModel):
    """The process answers (nothing else is checked)."""

    status: Literal["ok"] = "ok"


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorPublic(BaseModel):
    """Every 4xx body: which field (``loc``) and why (``msg``)."""

    detail: list[ErrorItem]
