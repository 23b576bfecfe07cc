"""A study's specification: what it searches, how, for how long, where it records.

``StudySpec`` is the single declaration of a study's fields; the CLI flags, the HTTP
request model and the runner all derive from it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search_spaces import Objective, SearchSpace, load_space, parse_space
from trainables.errors import CreditError
from trainables.experiments import EXPERIMENTS
from trainables.layers import LAYER_METRICS

STUDY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: The shape of a study id (the API's UUIDs): no name may have it, so that a name and
#: an id never find two different studies.
STUDY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Optuna's samplers, by the name a study gives (``service.runner.tuner`` builds them).
Sampler = Literal["random", "tpe", "qmc", "cmaes", "nsga2"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
#: The samplers that optimise several objectives at once (Optuna's CMA-ES cannot).
MULTI_OBJECTIVE_SAMPLERS = ("random", "tpe", "qmc", "nsga2")
#: StudySpec fields only the server sets (where records go, data, campaign nesting, tags):
#: a client of the HTTP API never names them.
SERVER_FIELDS = ("data_dir", "tracking_uri", "storage", "experiment_name", "group_run_id",
                 "labels")


#: The most members a population may have, and what ``population: "auto"`` reaches.
POPULATION_MAX = 4096
POPULATION_AUTO_MAX = 1024
#: The memory ``population: "auto"`` fills per trial: this many bytes per CPU it holds
#: (on a GPU, per GPU share: CREDIT_POPULATION_GPU_BYTES, default 8 GiB).
POPULATION_CPU_BYTES = 1 << 30
POPULATION_GPU_BYTES = 8 << 30


class StudyError(CreditError):
    """A study cannot start or resume (the message says why)."""


class SpecProblems(ValueError):
    """Raised by ``StudySpec``'s whole-study checks: each problem names the field it is
    about (``("objectives",)``, ``("enqueue", 0, "lr")``), which a pydantic error of the
    whole model could not; the HTTP API and the CLI read ``problems``."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {reason}"
                                   for loc, reason in problems))


class StudyProblems(StudyError):
    """A study cannot start for reasons each tied to a field of its spec (a warm start
    whose trials do not fit): ``problems`` as in ``SpecProblems``."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {reason}"
                                   for loc, reason in problems))

    def __reduce__(self):
        return type(self), (self.problems,)


def metrics_of(experiment: str) -> list[str]:
    """The per-epoch metrics a trial of ``experiment`` reports (what a study can optimise)."""
    exp = EXPERIMENTS.get(experiment)
    names = ["train_loss", "test_loss", "time_s"]
    if exp.classification:
        names.insert(0, "test_error")
    for layer in exp.layers:
        names += [f"{kind}/{layer.name}" for kind in LAYER_METRICS]
    return names


class Resources(BaseModel):
    """What one trial holds on the cluster."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    cpu: float = Field(1.0, gt=0, le=256, description="CPUs per trial")
    gpu: float = Field(0.0, ge=0, le=16, description="GPUs per trial, may be fractional")
    custom: dict[str, Annotated[float, Field(gt=0, le=1e9)]] = Field(
        default_factory=dict,
        description="custom Ray resources per trial, each > 0, e.g. {\"worker_host\": 1} "
                    "to pin trials")

    def ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu, **self.custom}


class EarlyStopping(BaseModel):
    """ASHA (asynchronous successive halving) over epochs."""

    model_config = ConfigDict(extra="forbid", strict=True)
    grace_period: int = Field(1, ge=1, le=100_000)
    reduction_factor: int = Field(2, ge=2, le=10)


class StudySpec(BaseModel):
    """Everything that defines a study; the same schema serves CLI, runner and HTTP API."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., description="unique study name: lowercase letters, digits, . _ -")
    space: str | SearchSpace = Field(..., description="a preset name, a JSON file, or a space")
    sampler: Sampler = Field("random", description="Optuna sampler (random: as in the paper)")
    seed: int = Field(0, ge=0, lt=2**31, description="sampler seed")
    training_seed: int | None = Field(
        None, ge=0, lt=2**31, description="every trial's training seed; default: the sampler seed"
    )
    objective: Objective | None = Field(
        None, description="the one objective; default: the space's (with `objectives`: "
        "their first)")
    objectives: list[Objective] | None = Field(
        None, min_length=1, max_length=8,
        description="several objectives at once (a Pareto front; samplers random, tpe, "
        "qmc, nsga2; no early_stopping, no final_seeds); the first is also Ray Tune's. "
        "Not with `objective`")
    max_trials: int = Field(20, ge=1, le=100_000, description="number of trials")
    population: int | Literal["auto"] = Field(
        1, description="configurations trained together in one Ray trial as one stacked model "
        "(each still its own trial: own Optuna trial, MLflow run, row); 1: one per trial; "
        f"'auto': as many as fit the memory of a trial, at most {POPULATION_AUTO_MAX}")
    parallel_trials: int = Field(1, ge=1, le=256, description="trials run at once")
    max_failed_trials: int | None = Field(
        None, ge=0, le=10_000, description="stop the study after more failed trials than this"
    )
    max_trial_restarts: int = Field(
        3, ge=0, le=100, description="restarts of a trial after an infrastructure failure (its "
        "node died, its storage failed), each from its last checkpoint; 0: none")
    early_stopping: bool | EarlyStopping = Field(
        False, description="early-stop weak trials (ASHA)"
    )
    epochs: int = Field(5, ge=1, le=100_000, description="epochs per trial")
    dataset: str | None = Field(None, description="dataset; default: the experiment's")
    data_dir: str | None = Field(None, description="data directory; default: $CREDIT_DATA_DIR")
    batches_per_epoch: int | None = Field(
        None, ge=1, le=10_000_000, description="batches per epoch; default: one pass"
    )
    resources: Resources = Field(default_factory=Resources)
    warm_start: list[str] = Field(
        default_factory=list, max_length=20,
        description="earlier studies (names; ids over HTTP) whose COMPLETE trials the "
        "sampler learns from before it samples; they do not count as this study's trials")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, max_length=1000,
        description="configurations ({param: value}) tried first, in order, then the "
        "sampler's; a parameter left out is sampled")
    final_seeds: int = Field(0, ge=0, le=100,
                             description="rerun the best configuration with this many seeds")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: sqlite in CREDIT_HOME"
    )
    storage: str | None = Field(
        None, description="Optuna storage URL (SQLAlchemy); default: sqlite in CREDIT_HOME"
    )
    experiment_name: str = Field("credit-search", min_length=1, max_length=200)
    group_run_id: str | None = Field(
        None, description="MLflow run to nest this study's parent run under (a campaign)"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="extra tags of the parent run (credit.<key>)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STUDY_NAME.match(v) or ".." in v:
            raise ValueError(
                "must be 1-64 characters of lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if STUDY_ID.match(v):
            raise ValueError("must not have the shape of a study id (a UUID)")
        return v

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        """Resolved once, here: a preset name or ``.json`` path is read, a dict validated."""
        if isinstance(v, dict):
            return parse_space(v)
        if isinstance(v, str):
            return load_space(v)
        return v

    @field_validator("population")
    @classmethod
    def _population(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= POPULATION_MAX:
            raise ValueError(f"must be 'auto' or an integer from 1 to {POPULATION_MAX}")
        return v

    @field_validator("warm_start")
    @classmethod
    def _warm_start(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not (STUDY_NAME.match(name) or STUDY_ID.match(name)):
                raise ValueError(f"warm_start[{i}]: {name!r} is not a study name or id")
        if len(set(v)) < len(v):
            raise ValueError("a study is named twice")
        return v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.objectives is not None:
            # the stored form holds both, the first objective repeated in ``objective``
            if self.objective is not None and self.objective != self.objectives[0]:
                problems.append((("objectives",), "give either objective (one) or "
                                 "objectives (several), not both"))
            self.objective = self.objectives[0]
            # checked as given (a stored single-objective spec holds both, unchecked)
            if self.multi_objective or "objective" not in self.model_fields_set:
                problems += self._objectives_problems()
        else:
            self.objective = self.objective or self.space.objective
            self.objectives = [self.objective]
        problems += self._enqueue_problems()
        if problems:
            raise SpecProblems(problems)
        # the study-level settings must make a valid trial config
        self.trial_config({})
        return self

    def members(self, memory_per_member: int | None = None) -> int:
        """Configurations per Ray trial: ``population``, or for ``"auto"`` as many as fill
        the trial's memory (``memory_per_member`` bytes each), at most
        ``POPULATION_AUTO_MAX`` and at most the trials each of ``parallel_trials`` runs."""
        if isinstance(self.population, int):
            return min(self.population, self.max_trials)
        share = -(-self.max_trials // self.parallel_trials)
        budget = (self.resources.gpu * POPULATION_GPU_BYTES if self.resources.gpu > 0
                  else self.resources.cpu * POPULATION_CPU_BYTES)
        fit = int(budget // memory_per_member) if memory_per_member else POPULATION_AUTO_MAX
        return max(1, min(POPULATION_AUTO_MAX, share, fit))

    def _objectives_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        valid = metrics_of(self.search_space().experiment)
        seen: set[str] = set()
        for i, o in enumerate(self.objectives):
            if o.metric not in valid:
                problems.append((("objectives", i, "metric"), (
                    f"unknown metric {o.metric!r} for experiment "
                    f"{self.search_space().experiment!r}; valid: {', '.join(valid)}")))
            elif o.metric in seen:
                problems.append((("objectives", i, "metric"),
                                 f"metric {o.metric!r} is named twice"))
            seen.add(o.metric)
        if self.multi_objective:
            if self.sampler not in MULTI_OBJECTIVE_SAMPLERS:
                problems.append((("sampler",), (
                    f"{self.sampler!r} optimises one objective; with several objectives "
                    f"use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")))
            if self.early_stopping:
                problems.append((("early_stopping",), (
                    "ASHA ranks trials by one metric; it cannot stop trials early for "
                    "several objectives")))
            if self.final_seeds:
                problems.append((("final_seeds",), (
                    "several objectives have no single best configuration to rerun; "
                    "pick one from the Pareto front and run it with 'credit train'")))
        return problems

    def _enqueue_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        params = self.search_space().params
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if len(self.enqueue) > self.max_trials:
            problems.append((("enqueue",), (f"{len(self.enqueue)} configurations, more than "
                                            f"max_trials={self.max_trials}")))
        for i, config in enumerate(self.enqueue):
            if not config:
                problems.append((("enqueue", i), "an empty configuration"))
            for name, value in config.items():
                if name not in params:
                    problems.append((("enqueue", i, name), (
                        f"not a searched parameter of space {self.search_space().name!r}; "
                        f"valid: {', '.join(params)}")))
                elif not params[name].contains(value):
                    bounds = ", ".join(f"{k}={v!r}" for k, v in params[name].extremes())
                    problems.append((("enqueue", i, name),
                                     f"{value!r} is outside the space ({bounds})"))
        return problems

    @property
    def multi_objective(self) -> bool:
        """Whether the study optimises several objectives (a Pareto front, no best)."""
        return self.objectives is not None and len(self.objectives) > 1

    def search_space(self) -> SearchSpace:
        """The study's search space (resolved when the spec was validated)."""
        assert isinstance(self.space, SearchSpace)
        return self.space

    def trial_settings(self, seed: int | None = None) -> dict[str, Any]:
        """The trial-config fields the study sets for every trial (``seed``: the training
        seed, default ``training_seed``, else the sampler's ``seed``)."""
        settings: dict[str, Any] = {"epochs": self.epochs}
        for key in ("dataset", "data_dir", "batches_per_epoch"):
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        if self.resources.gpu > 0:
            settings["device"] = "cuda"
        if seed is None:
            seed = self.seed if self.training_seed is None else self.training_seed
        settings["seed"] = seed
        return settings

    def param_space(self) -> dict[str, Any]:
        """Every trial's config less the sampled parameters (Ray Tune's ``param_space``):
        exactly what ``trial_config`` adds to them."""
        return {**self.search_space().base(), **self.trial_settings()}

    def trial_config(self, sampled: dict[str, Any], seed: int | None = None):
        """The TrainConfig of one trial: the space's mid-point where ``sampled`` is silent."""
        space = self.search_space()
        return space.trial_config({**space.midpoint(), **sampled}, **self.trial_settings(seed))
