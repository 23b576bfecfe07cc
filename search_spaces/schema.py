"""Search spaces as validated, JSON-able data.

A ``SearchSpace`` names an experiment and a learning rule, the ``TrainConfig`` fields
held constant (``fixed``) and the fields searched (``params``, each a distribution).
Constructing one checks everything that can be checked before a trial runs: every
key is a ``TrainConfig`` field, every bound lies inside that field's own range, and a
config built from the space (every parameter at its mid-point) is valid as a whole.

Errors raised while constructing are pydantic ``ValidationError``s (so the model can
be a FastAPI request body); ``search_spaces.parse_space`` and ``load_space`` turn
them into one-line ``SearchSpaceError``s that name the source, the parameter and the
reason.
"""

from __future__ import annotations

import math
import numbers
import re
from abc import abstractmethod
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from trainables.catalog import RULE_NAMES as RULES  # torch-free: the CLI validates fast
from trainables.config import ExperimentName, RuleName, TrainConfig
from trainables.errors import ConfigError
from trainables.experiments import EXPERIMENTS
from trainables.validation import error_phrase

if TYPE_CHECKING:
    from optuna.distributions import (
        BaseDistribution,
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

__all__ = [
    "STUDY_FIELDS",
    "CategoricalParam",
    "Distribution",
    "FloatParam",
    "IntParam",
    "JsonScalar",
    "Objective",
    "ParamDistribution",
    "SearchSpace",
    "SearchSpaceError",
    "validation_problems",
]

#: TrainConfig fields a search space may neither tune nor fix: they belong to the
#: study (what is trained, for how long, on what data and hardware, from which seed).
STUDY_FIELDS = ("experiment", "rule", "epochs", "dataset", "data_dir", "device", "seed")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_METRIC = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,127}$")
_CLASSIFICATION_METRICS = ("test_error", "best_test_error")


class SearchSpaceError(ConfigError):
    """A search space is invalid; the one-line message names its source, the parameter
    (a dotted location such as ``params.lr.low``) and the reason.

    ``problems`` keeps the (location, reason) pairs for callers that report them
    separately (an HTTP 422 body, say); a location is ``""`` for the space as a whole.
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]):
        self.source = source
        self.problems = [(str(loc), str(reason)) for loc, reason in problems]
        text = "; ".join(f"{loc}: {reason}" if loc else reason for loc, reason in self.problems)
        super().__init__(f"search space {source}: {text}")

    def __reduce__(self):  # keep it picklable (Ray ships exceptions between processes)
        return type(self), (self.source, self.problems)


class _SpaceProblems(ValueError):
    """Raised inside validators: problems whose location is known but is not where
    pydantic raised them (a whole-space check names the parameter itself)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{loc}: {r}" if loc else r for loc, r in problems))


# ----------------------------------------------------------------------- scalars


def _json_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number (got {value!r})")
        return value
    raise ValueError(
        f"must be a JSON scalar (string, number, boolean or null), got {type(value).__name__}"
    )


#: A JSON string, finite number, boolean or null — kept as the type it was given.
_SCALAR_TYPES = str | bool | int | float | None
JsonScalar = Annotated[
    _SCALAR_TYPES, PlainValidator(_json_scalar, json_schema_input_type=_SCALAR_TYPES)
]


def _show(value: Any) -> str:
    """A value as it reads in JSON (``true``, ``null``, ``"adam"``, ``0.1``)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


# ------------------------------------------------------------------ distributions


class ParamDistribution(BaseModel):
    """Base of the distributions one parameter is drawn from (discriminated by ``type``)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @abstractmethod
    def to_optuna(self) -> BaseDistribution:
        """The equivalent Optuna distribution."""

    @abstractmethod
    def midpoint(self) -> Any:
        """A representative value: the (geometric, for log) middle, or the middle choice."""

    @abstractmethod
    def extremes(self) -> list[tuple[str, Any]]:
        """(label, value) pairs that bound what can be sampled: low and high, or each choice."""

    @abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be drawn from this distribution."""


def _check_bounds(low: float, high: float, log: bool, log_floor: str) -> None:
    if not low < high:
        extra = "; to hold a value constant, put it in 'fixed'" if low == high else ""
        raise ValueError(f"low must be < high (got low={_show(low)}, high={_show(high)}){extra}")
    if log and not (low >= 1 if log_floor == ">= 1" else low > 0):
        raise ValueError(f"log=true needs low {log_floor} (got low={_show(low)})")


def _multiple(span: Decimal, step: Decimal) -> bool:
    return step > 0 and span % step == 0


class FloatParam(ParamDistribution):
    """A float, uniform or log-uniform on [low, high]; ``step`` discretises a uniform one."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _valid(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log, "> 0")
        if self.step is not None:
            if self.log:
                raise ValueError("step cannot be combined with log=true")
            if not self.step > 0:
                raise ValueError(f"step must be > 0 (got step={_show(self.step)})")
            span = Decimal(repr(self.high)) - Decimal(repr(self.low))
            if not _multiple(span, Decimal(repr(self.step))):
                raise ValueError(
                    f"high - low must be a multiple of step (got low={_show(self.low)}, "
                    f"high={_show(self.high)}, step={_show(self.step)})"
                )
        return self

    def to_optuna(self) -> FloatDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def midpoint(self) -> float:
        if self.log:
            return math.exp((math.log(self.low) + math.log(self.high)) / 2)
        if self.step is not None:
            n = round((self.high - self.low) / self.step)
            return min(self.low + (n // 2) * self.step, self.high)
        return (self.low + self.high) / 2

    def extremes(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high)]

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        slack = 1e-12 * max(abs(self.low), abs(self.high))  # a sampler's last-bit rounding
        if not self.low - slack <= value <= self.high + slack:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-8


class IntParam(ParamDistribution):
    """An integer, uniform or log-uniform on [low, high] in steps of ``step`` from low."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _valid(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log, ">= 1")
        if self.step < 1:
            raise ValueError(f"step must be >= 1 (got step={self.step})")
        if self.log and self.step != 1:
            raise ValueError(f"step must be 1 with log=true (got step={self.step})")
        if (self.high - self.low) % self.step:
            raise ValueError(
                f"high - low must be a multiple of step (got low={self.low}, "
                f"high={self.high}, step={self.step})"
            )
        return self

    def to_optuna(self) -> IntDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def midpoint(self) -> int:
        if self.log:
            return min(max(round(math.sqrt(self.low * self.high)), self.low), self.high)
        return self.low + ((self.high - self.low) // self.step // 2) * self.step

    def extremes(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high)]

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, numbers.Integral)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )


class CategoricalParam(ParamDistribution):
    """One of a list of distinct JSON scalars, each equally likely (for random search)."""

    type: Literal["categorical"] = "categorical"
    choices: list[JsonScalar]

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        if not choices:
            raise ValueError("choices must not be empty")
        for i, a in enumerate(choices):
            for b in choices[:i]:
                # 1, 1.0 and true are equal in Python (and to Optuna): one would shadow the other
                if a == b:
                    same = "" if _show(a) == _show(b) else f" (equal to {_show(b)})"
                    raise ValueError(f"duplicate choice {_show(a)}{same}")
        return choices

    def to_optuna(self) -> CategoricalDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(tuple(self.choices))

    def midpoint(self) -> Any:
        return self.choices[len(self.choices) // 2]

    def extremes(self) -> list[tuple[str, Any]]:
        return [("choice", c) for c in self.choices]

    def contains(self, value: Any) -> bool:
        return any(value == c and isinstance(value, bool) == isinstance(c, bool)
                   for c in self.choices)


#: Any one of the distributions, told apart by ``"type"``.
Distribution = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
_TYPES = ("float", "int", "categorical")


# ------------------------------------------------------------------------ space


class Objective(BaseModel):
    """The metric a study optimises, and in which direction."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    metric: str
    mode: Literal["min", "max"] = "min"

    @field_validator("metric")
    @classmethod
    def _metric_form(cls, v: str) -> str:
        if not _METRIC.fullmatch(v):
            raise ValueError(
                f"metric {v!r} must start with a letter and use letters, digits, '_./-' only"
            )
        return v


def _integer_field(name: str) -> bool:
    """Whether TrainConfig's field only takes integers (then a float range is a mistake)."""
    types = {t for t in get_args(TrainConfig.model_fields[name].annotation) if t is not type(None)}
    return (types or {TrainConfig.model_fields[name].annotation}) == {int}


def _field_problems(err: ValidationError) -> tuple[dict[str, str], list[str]]:
    """A TrainConfig error split into {field: reason} and reasons of the whole config."""
    fields: dict[str, str] = {}
    whole: list[str] = []
    for error in err.errors():
        loc = error.get("loc", ())
        if loc:
            fields.setdefault(str(loc[0]), _reason(error, with_input=False))
        else:
            whole.append(_reason(error, with_input=False))
    return fields, whole


def _try_config(values: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    try:
        TrainConfig(**values)
    except ValidationError as err:
        return _field_problems(err)
    return {}, []


class SearchSpace(BaseModel):
    """What a study searches: an experiment and a rule, constants, and distributions.

    ``params`` maps ``TrainConfig`` fields to distributions; ``fixed`` maps fields to
    constant values; the study itself supplies ``STUDY_FIELDS`` (epochs, dataset, seed…)
    through ``trial_config``. ``objective`` defaults to ``test_error``/min for
    classification experiments and ``test_loss``/min otherwise.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(
        description="lowercase letters, digits and hyphens (1-64 characters)",
        json_schema_extra={"pattern": _NAME.pattern},
    )
    description: str = ""
    experiment: ExperimentName = Field(description="network: " + ", ".join(EXPERIMENTS.names()))
    rule: RuleName = Field(description="learning rule: " + ", ".join(RULES.names()))
    fixed: dict[str, JsonScalar] = Field(
        default_factory=dict, description="TrainConfig fields held constant in every trial"
    )
    params: dict[str, Distribution] = Field(
        description="TrainConfig fields searched, each with its distribution"
    )
    objective: Objective | None = None

    @field_validator("name")
    @classmethod
    def _name_form(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid name: use 1-64 lowercase letters, digits and "
                "hyphens, starting with a letter or digit (it becomes part of file names)"
            )
        return v

    @field_validator("params")
    @classmethod
    def _some_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("a search space needs at least one parameter (constants go in "
                             "'fixed')")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        self._check_keys()
        self._check_against_config()
        if self.objective is None:
            classification = EXPERIMENTS.get(self.experiment).classification
            default = Objective(metric="test_error" if classification else "test_loss")
            object.__setattr__(self, "objective", default)
        elif (self.objective.metric in _CLASSIFICATION_METRICS
              and not EXPERIMENTS.get(self.experiment).classification):
            raise _SpaceProblems([("objective.metric", (
                f"{self.objective.metric!r} is only reported by classification experiments; "
                f"{self.experiment!r} is not one (use 'test_loss')"))])
        return self

    def _check_keys(self) -> None:
        fields = TrainConfig.model_fields
        allowed = [f for f in fields if f not in STUDY_FIELDS]
        problems: list[tuple[str, str]] = []
        for section, keys in (("fixed", self.fixed), ("params", self.params)):
            for key in keys:
                loc = f"{section}.{key}"
                if key in STUDY_FIELDS:
                    problems.append((loc, (
                        f"{key!r} is a study-level setting: give it when the study is submitted, "
                        "it cannot be tuned or fixed in a search space")))
                elif key not in fields:
                    problems.append((loc, (
                        f"unknown TrainConfig field {key!r}; valid: {', '.join(allowed)}")))
                elif section == "params" and key in self.fixed:
                    problems.append((loc, f"{key!r} is both fixed and tuned; keep one"))
                elif (section == "params" and isinstance(self.params[key], FloatParam)
                      and _integer_field(key)):
                    problems.append((loc, (
                        f"TrainConfig field {key!r} takes integers: use \"type\": \"int\"")))
        if problems:
            raise _SpaceProblems(problems)

    def base(self) -> dict[str, Any]:
        """What every trial's config takes from the space alone: experiment, rule, fixed."""
        return {"experiment": self.experiment, "rule": self.rule, **self.fixed}

    def _check_against_config(self) -> None:
        """Bounds inside TrainConfig's ranges, and a valid config at the mid-point."""
        base = self.base()
        problems: list[tuple[str, str]] = []
        # 1. fixed values, field by field (cross-field rules may need a tuned value)
        fields, _ = _try_config(base)
        problems += [(f"fixed.{k}", f"{_show(self.fixed[k])} is invalid: {r}")
                     for k, r in fields.items() if k in self.fixed]
        if problems:
            raise _SpaceProblems(problems)
        # 2. each parameter's bounds (or choices), with the others at their mid-points
        mid = self.midpoint()
        cross: list[tuple[str, str]] = []
        for key, dist in self.params.items():
            for label, value in dist.extremes():
                fields, whole = _try_config({**base, **mid, key: value})
                if key in fields:
                    what = "out of range" if label in ("low", "high") else "invalid"
                    problems.append((f"params.{key}",
                                     f"{label}={_show(value)} is {what}: {fields[key]}"))
                    break
                cross += [(f"params.{key}", f"{label}={_show(value)} is invalid here: {r}")
                          for r in whole]
        if problems:
            raise _SpaceProblems(problems)
        # 3. the whole config at the mid-point, for rules that tie fields together
        fields, whole = _try_config({**base, **mid})
        if fields or whole:
            reasons = [f"{k}: {r}" for k, r in fields.items()] + whole
            raise _SpaceProblems([("", (
                "the fixed values with every parameter at its mid-point do not make a valid "
                f"TrainConfig: {'; '.join(reasons)}"))])
        # 4. a bound that breaks such a rule although the mid-point is fine
        if cross:
            first: dict[str, str] = {}
            for loc, reason in cross:
                first.setdefault(loc, reason)  # one per parameter
            raise _SpaceProblems(list(first.items()))

    # ------------------------------------------------------------------ use

    def midpoint(self) -> dict[str, Any]:
        """Every parameter at its mid-point (geometric for log ranges; middle choice)."""
        return {key: dist.midpoint() for key, dist in self.params.items()}

    def to_optuna(self) -> dict[str, BaseDistribution]:
        """The parameters as Optuna distributions (``OptunaSearch``'s ``space``)."""
        return {key: dist.to_optuna() for key, dist in self.params.items()}

    def trial_config(self, sampled: dict[str, Any], **study_settings: Any) -> TrainConfig:
        """The ``TrainConfig`` of one trial: experiment, rule and fixed values, the
        ``sampled`` parameters (exactly the keys of ``params``, each inside its
        distribution), and the study's own settings (epochs, dataset, seed, data_dir,
        device, or any other field the space leaves free).

        Raises ``SearchSpaceError`` naming the offending key.
        """
        problems: list[tuple[str, str]] = []
        for key in self.params:
            if key not in sampled:
                problems.append((f"params.{key}", "no sampled value"))
        for key, value in sampled.items():
            if key not in self.params:
                problems.append((key, "sampled but not a parameter of this space"))
            elif not self.params[key].contains(value):
                problems.append((f"params.{key}",
                                 f"sampled value {_show(value)} is outside its distribution"))
        for key in study_settings:
            if key in ("experiment", "rule"):
                problems.append((key, f"set by the search space ({getattr(self, key)!r})"))
            elif key in self.fixed or key in self.params:
                section = "fixed" if key in self.fixed else "params"
                problems.append((key, f"study setting {key!r} is in the space's {section}"))
        if problems:
            raise SearchSpaceError(self.name, problems)
        try:
            return TrainConfig(**self.base(), **sampled, **study_settings)
        except ValidationError as err:
            raise SearchSpaceError(self.name, validation_problems(err)) from None

    def to_json(self, indent: int | None = 2) -> str:
        """The space as JSON text (``SearchSpace.model_validate_json`` reads it back)."""
        return self.model_dump_json(indent=indent)


# ----------------------------------------------------------------------- messages

def _reason(error: dict[str, Any], with_input: bool = True) -> str:
    """What is wrong with one value, in words (pydantic's error dict → one phrase)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "union_tag_invalid":
        return (f"unknown distribution type {_show(ctx.get('tag'))}; valid: "
                f"{', '.join(_TYPES)}")
    if kind == "union_tag_not_found":
        return f"needs a \"type\": one of {', '.join(_TYPES)}"
    return error_phrase(error, with_input=with_input, show=_show)


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted location, reason) pairs of a ``ValidationError`` from ``SearchSpace``.

    A distribution's ``type`` tag is dropped from locations (``params.lr.low``, not
    ``params.lr.float.low``); whole-space problems carry their own locations.
    """
    problems: list[tuple[str, str]] = []
    for error in err.errors():
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _SpaceProblems):
            problems += ctx_error.problems
            continue
        loc = [str(p) for p in error.get("loc", ())]
        if len(loc) >= 3 and loc[0] == "params" and loc[2] in _TYPES:
            del loc[2]
        if len(loc) >= 4 and loc[0] == "params" and loc[2] == "choices":
            loc[3] = f"[{loc[3]}]"  # params.optimizer.choices[1]
        problems.append((".".join(loc).replace(".[", "["), _reason(error)))
    return problems
