"""What the command modules share: the usage error, flags made from pydantic fields,
one-line validation messages, the study flags, and how a command's work is loaded.

A command module exposes ``register(subparsers)``: it adds its parser(s) and sets
``func(args) -> int`` with ``set_defaults``. ``service.cli`` lists the modules and
turns the exceptions below (and the ``trainables`` ones) into one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from search_spaces import Objective
from service.spec import SERVER_FIELDS, Resources, SpecProblems, StudySpec
from trainables.errors import ConfigError
from trainables.validation import error_phrase

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic.fields import FieldInfo

__all__ = ["STUDY_FLAGS", "UsageError", "add_study_options", "field_option", "flag",
           "run_action", "study_fields", "study_flag", "study_options",
           "validation_message"]


class UsageError(ConfigError):
    """The command line itself is wrong (a bad flag or value); exit status 2."""


#: Where a command's work lives: ``service.commands.actions.<module>``.
ACTIONS = "service.commands.actions"


def run_action(target: str, *args: Any) -> int:
    """Call ``<module>:<function>`` of ``ACTIONS`` with ``args``, importing the module now.

    The one deferred import of the project's own code, on purpose: an action imports
    torch, Ray, MLflow or FastAPI (seconds), which ``--help``, the listings and bad input
    must not wait for (the pattern of Click's lazily loaded subcommands). The import-
    graph test reads these targets as imports of the calling module."""
    module, _, name = target.partition(":")
    action: Callable[..., int] = getattr(importlib.import_module(f"{ACTIONS}.{module}"), name)
    return action(*args)


def flag(field: str) -> str:
    """The command-line flag of a config field: ``noise_std`` → ``--noise-std``."""
    return "--" + field.replace("_", "-")


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _number(value: Any) -> str:
    """A bound as people write it: ``2**63`` rather than its 19 digits."""
    if isinstance(value, int) and value >= 2**20 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return str(value)


def field_option(name: str, info: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keywords for a pydantic field: type and metavar from its annotation,
    help from its description, range and default. The flag is optional and absent from
    the namespace when not given (the model's own default then applies)."""
    kind = info.annotation
    option: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    words = [w for a in get_args(kind) if get_origin(a) is Literal for w in get_args(a)]
    if get_origin(kind) in (Union, types.UnionType) and int in get_args(kind) and words:
        # int | Literal["auto"]: a number or one of the words (the model checks which)
        def number_or_word(value: str) -> int | str:
            return value if value in words else int(value)

        number_or_word.__name__ = "integer or " + "/".join(map(repr, words))
        option.update(type=number_or_word, metavar="{N," + ",".join(words) + "}")
        option["help"] = (info.description or name).replace("%", "%%")
        return option
    if get_origin(kind) in (Union, types.UnionType):  # X | None, or bool | Settings: X, bool
        kind = next(a for a in get_args(kind) if a is not type(None))
    label = name.rsplit(".", 1)[-1]  # objective.metric → METRIC
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        option.update(type=type(choices[0]), metavar="{" + ",".join(map(str, choices)) + "}")
    elif kind is bool:
        option["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float):
        option.update(type=kind, metavar="N" if kind is int else label.upper())
    else:
        option.update(type=str, metavar=label.upper())
    text = info.description or name.replace("_", " ").replace(".", " ")
    bounds = [f"{sign} {_number(getattr(m, key))}" for m in info.metadata
              for key, sign in _BOUNDS if getattr(m, key, None) is not None]
    if bounds:
        text += f" ({', '.join(bounds)})"
    if info.default is not None and kind is not bool and not info.is_required():
        text += f" (default: {info.default})"
    option["help"] = text.replace("%", "%%")
    return option


def _problem(error: dict[str, Any]) -> str:
    """What is wrong with one value, in words, with the valid range or choices."""
    return error_phrase(error, unknown="unknown setting")


def validation_message(err: ValidationError, name=flag) -> str:
    """One line for a pydantic ``ValidationError``: ``--noise-std: must be > 0 (got -1.0)``.

    ``name`` maps a field to how the user wrote it (a flag here; a JSON key elsewhere).
    Errors of the whole model (no field) are given as they are; several join with ``; ``.
    """
    parts = []
    for error in err.errors():
        inner = (error.get("ctx") or {}).get("error")
        if isinstance(inner, SpecProblems):  # whole-study checks, each naming its field
            parts += [f"{name('.'.join(map(str, loc)))}: {reason}"
                      for loc, reason in inner.problems]
            continue
        loc = ".".join(str(p) for p in error.get("loc", ()))
        problem = _problem(error)
        parts.append(f"{name(loc)}: {problem}" if loc else problem)
    return "; ".join(parts)


#: Flags whose name is not ``--field-name`` (nested fields as ``parent.field``).
STUDY_FLAGS = {"max_trials": "--trials", "parallel_trials": "--concurrency",
               "max_failed_trials": "--max-failed", "max_trial_restarts": "--max-restarts",
               "early_stopping": "--asha",
               "objective.metric": "--metric", "objective.mode": "--mode",
               "resources.cpu": "--cpus-per-trial", "resources.gpu": "--gpus-per-trial",
               "objectives": "--objective"}
#: StudySpec fields given by repeatable flags of their own (``_list_options``).
LIST_FIELDS = ("objectives", "warm_start", "enqueue")


def study_flag(field: str) -> str:
    """The command-line flag of a StudySpec field (``max_trials`` → ``--trials``); an item
    of a list field keeps its place: ``enqueue.0.lr`` → ``--enqueue[0].lr``."""
    head, *rest = field.split(".")
    if head in LIST_FIELDS and rest:
        index, *sub = rest
        return f"{study_flag(head)}[{index}]" + "".join(f".{p}" for p in sub)
    return STUDY_FLAGS.get(field, flag(field))


def study_options(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The StudySpec fields a command sets by flag, with their pydantic ``FieldInfo``:
    every field a client may send (not the server's), nested models field by field
    (``objective.metric``), and the server fields named in ``extra``."""
    nested = {"objective": Objective, "resources": Resources}
    options: dict[str, Any] = {}
    for name, info in StudySpec.model_fields.items():
        if name == "space" or name in LIST_FIELDS or (name in SERVER_FIELDS
                                                      and name not in extra):
            continue
        if name in nested:
            for sub, sub_info in nested[name].model_fields.items():
                if (name, sub) != ("resources", "custom"):  # --trial-resource NAME=AMOUNT
                    options[f"{name}.{sub}"] = sub_info
        else:
            options[name] = info
    return options


def add_study_options(p: argparse.ArgumentParser, extra: tuple[str, ...] = ()) -> None:
    """Add one flag per StudySpec field (see ``study_options``); each optional: the spec
    has the defaults. Deferred: StudySpec imports the trainables (torch)."""

    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("study")
        for name, info in study_options(extra).items():
            option = field_option(name, info)
            if name == "objective.metric":
                option["help"] = "objective metric (default: the space's)"
            group.add_argument(study_flag(name), **option)
        group.add_argument(
            "--objective", action="append", metavar="METRIC:MODE", dest="objectives",
            help="an objective (repeatable: several make a Pareto front), e.g. "
            "test_error:min --objective angle/fc2:min; not with --metric/--mode")
        group.add_argument(
            "--warm-start", action="append", metavar="STUDY", dest="warm_start",
            help="an earlier study whose complete trials the sampler learns from first "
            "(repeatable); a trial that does not fit the space is an error")
        group.add_argument(
            "--enqueue", action="append", metavar="JSON", dest="enqueue",
            help="a configuration to try first, e.g. '{\"lr\": 0.01}' (repeatable, or a "
            "JSON list of them)")
        group.add_argument(
            "--trial-resource", action="append", metavar="NAME=AMOUNT",
            help="a custom Ray resource per trial (repeatable), e.g. worker_host=1 to pin "
            "trials to the nodes started with it")

    p.deferred.append(add)


def study_fields(args: argparse.Namespace, base: dict[str, Any] | None = None,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``base`` (a study's fields) updated with the flags given (``add_study_options``'
    plus those of ``extra``). Nested fields (``objective``, ``resources``) merge key by
    key, so a flag overrides one key of a file's value and keeps the rest."""
    fields = dict(base or {})
    for name in study_options(extra):
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        head, _, sub = name.partition(".")
        if sub:
            fields[head] = {**(fields.get(head) or {}), sub: value}
            if head == "objective":
                fields[head].setdefault("metric", "test_error")
        else:
            fields[name] = value
    fields.update(_list_fields(args))
    for item in getattr(args, "trial_resource", None) or []:
        key, _, amount = item.partition("=")
        try:
            custom = {key.strip(): float(amount)}
        except ValueError:
            raise UsageError(f"--trial-resource: expected NAME=AMOUNT (got {item!r})") from None
        resources = dict(fields.get("resources") or {})
        resources["custom"] = {**(resources.get("custom") or {}), **custom}
        fields["resources"] = resources
    return fields


def _list_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``objectives``, ``warm_start`` and ``enqueue`` from their repeatable flags."""
    fields: dict[str, Any] = {}
    if getattr(args, "objectives", None):
        if hasattr(args, "objective.metric") or hasattr(args, "objective.mode"):
            raise UsageError("--objective: give either --objective (repeatable) or "
                             "--metric/--mode, not both")
        objectives = []
        for item in args.objectives:
            metric, sep, mode = item.rpartition(":")
            if not sep or not metric or mode not in ("min", "max"):
                raise UsageError(f"--objective: expected METRIC:MODE with MODE min or max "
                                 f"(got {item!r})")
            objectives.append({"metric": metric, "mode": mode})
        fields["objectives"] = objectives
    if getattr(args, "warm_start", None):
        fields["warm_start"] = list(args.warm_start)
    configs: list[Any] = []
    for item in getattr(args, "enqueue", None) or []:
        try:
            value = json.loads(item)
        except json.JSONDecodeError as error:
            raise UsageError(f"--enqueue: not JSON ({error.msg}): {item!r}") from None
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(c, dict) for c in items):
            raise UsageError(f"--enqueue: expected a JSON object of parameters, or a list "
                             f"of them (got {item!r})")
        configs += items
    if configs:
        fields["enqueue"] = configs
    return fields
