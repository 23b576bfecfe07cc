"""Subcommands of ``credit``, one module each, plus what they share.

A command module exposes ``register(subparsers)``: it adds its parser(s) and sets
``func(args) -> int`` with ``set_defaults``. ``service.cli`` lists the modules and
turns the exceptions below (and the ``trainables`` ones) into one-line errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.errors import ConfigError
from trainables.validation import error_phrase

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["UsageError", "flag", "validation_message"]


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
