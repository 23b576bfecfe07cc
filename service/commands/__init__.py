"""Subcommands of ``credit``, one module each, plus what they share.

A command module exposes ``register(subparsers)``: it adds its parser(s) and sets
``func(args) -> int`` with ``set_defaults``. ``service.cli`` lists the modules and
turns the exceptions below (and the ``trainables`` ones) into one-line errors.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from trainables.errors import ConfigError
from trainables.validation import error_phrase

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["UsageError", "add_study_options", "flag", "study_fields", "validation_message"]


class UsageError(ConfigError):
    """The command line itself is wrong (a bad flag or value); exit status 2."""


def flag(field: str) -> str:
    """The command-line flag of a config field: ``noise_std`` → ``--noise-std``."""
    return "--" + field.replace("_", "-")


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
        loc = [str(p) for p in error.get("loc", ())]
        problem = _problem(error)
        parts.append(f"{name(loc[0])}{''.join(f'.{p}' for p in loc[1:])}: {problem}"
                     if loc else problem)
    return "; ".join(parts)


# The study settings that ``credit search`` and ``credit studies submit`` both take.
_STUDY_KEYS = ("name", "max_trials", "parallel_trials", "sampler", "seed", "epochs",
               "batches_per_epoch", "dataset", "max_failed_trials", "final_seeds")


def add_study_options(p: argparse.ArgumentParser) -> None:
    """Add the flags of a study's settings (every one optional: the spec has defaults)."""
    add = p.add_argument
    add("--name", metavar="NAME", help="unique study name (default: <space>-<timestamp>)")
    add("--trials", type=int, dest="max_trials", metavar="N", help="number of trials (20)")
    add("--concurrency", type=int, dest="parallel_trials", metavar="N",
        help="trials run at once (1)")
    add("--sampler", metavar="NAME", help="random (as in the paper), tpe, qmc or cmaes (random)")
    add("--seed", type=int, metavar="N", help="sampler seed (0)")
    add("--metric", metavar="NAME", help="objective metric (default: the space's)")
    add("--mode", metavar="min|max", help="min or max")
    add("--epochs", type=int, metavar="N", help="epochs per trial (5)")
    add("--batches-per-epoch", type=int, metavar="N", help="batches per epoch (one pass)")
    add("--dataset", metavar="NAME", help="dataset (default: the experiment's)")
    add("--max-failed", type=int, dest="max_failed_trials", metavar="N",
        help="stop the study after more failed trials than this")
    add("--asha", action="store_true", help="early-stop weak trials (ASHA)")
    add("--final-seeds", type=int, metavar="K", help="rerun the best configuration with K seeds")
    add("--cpus-per-trial", type=float, metavar="CPUS", help="CPUs per trial (1)")
    add("--gpus-per-trial", type=float, metavar="GPUS",
        help="GPUs per trial, may be fractional (0)")
    add("--trial-resource", action="append", metavar="NAME=AMOUNT",
        help="a custom Ray resource per trial (repeatable), e.g. worker_host=1 to pin trials "
        "to the nodes started with it")


def study_fields(args: argparse.Namespace, base: dict[str, Any] | None = None,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``base`` (a study's fields) updated with the flags given: the ``add_study_options``
    ones plus the attributes named in ``extra``. ``objective`` and ``resources`` merge
    key by key, so a flag overrides one key of a file's value and keeps the rest."""
    fields = dict(base or {})
    for key in _STUDY_KEYS + extra:
        value = getattr(args, key)
        if value is not None:
            fields[key] = value
    if args.asha:
        fields["early_stopping"] = True
    if args.metric or args.mode:
        objective = dict(fields.get("objective") or {})
        objective.update({k: v for k, v in (("metric", args.metric), ("mode", args.mode)) if v})
        objective.setdefault("metric", "test_error")
        fields["objective"] = objective
    resources = dict(fields.get("resources") or {})
    for key, value in (("cpu", args.cpus_per_trial), ("gpu", args.gpus_per_trial)):
        if value is not None:
            resources[key] = value
    for item in getattr(args, "trial_resource", None) or []:
        name, _, amount = item.partition("=")
        try:
            resources.setdefault("custom", {})[name.strip()] = float(amount)
        except ValueError:
            raise UsageError(f"--trial-resource: expected NAME=AMOUNT (got {item!r})") from None
    if resources:
        fields["resources"] = resources
    return fields
