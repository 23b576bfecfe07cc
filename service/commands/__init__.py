"""Subcommands of ``credit``, one module each, plus what they share.

A command module exposes ``register(subparsers)``: it adds its parser(s) and sets
``func(args) -> int`` with ``set_defaults``. ``service.cli`` lists the modules and
turns the exceptions below (and the ``trainables`` ones) into one-line errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["UsageError", "flag", "validation_message"]


class UsageError(ConfigError):
    """The command line itself is wrong (a bad flag or value); exit status 2."""


def flag(field: str) -> str:
    """The command-line flag of a config field: ``noise_std`` → ``--noise-std``."""
    return "--" + field.replace("_", "-")


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _problem(error: dict[str, Any]) -> str:
    """What is wrong with one value, in words, with the valid range or choices."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])  # our validators' messages already name the value
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, op = _BOUNDS[kind]
        bound = ctx[key]
        text = f"must be {op} {bound:g}" if isinstance(bound, float) else f"must be {op} {bound}"
    elif kind == "literal_error":
        text = f"must be {ctx.get('expected', '?')}"
    elif kind == "extra_forbidden":
        return "unknown setting"
    else:
        msg = error["msg"].removeprefix("Input should be ")
        text = f"must be {msg}" if msg != error["msg"] else msg[:1].lower() + msg[1:]
    if "input" in error and not isinstance(error["input"], dict):
        text += f" (got {error['input']!r})"
    return text


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
