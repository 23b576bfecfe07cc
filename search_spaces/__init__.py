"""Search spaces: which ``TrainConfig`` fields a study searches, over which ranges.

A space is JSON data validated by ``SearchSpace`` (see ``schema.py``). Presets ship
as ``presets/<experiment>-<rule>.json``; ``load_space`` takes a preset name or a
path to a ``.json`` file, ``parse_space`` an inline dict (the HTTP API's body).
Every failure is a ``SearchSpaceError`` with a one-line message naming the source,
the parameter and the reason::

    search space my.json: params.lr: low must be < high (got low=1.0, high=0.1)
"""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from search_spaces.schema import (
    STUDY_FIELDS,
    CategoricalParam,
    Distribution,
    FloatParam,
    IntParam,
    Objective,
    ParamDistribution,
    SearchSpace,
    SearchSpaceError,
    validation_problems,
)

__all__ = [
    "STUDY_FIELDS",
    "CategoricalParam",
    "Distribution",
    "FloatParam",
    "IntParam",
    "Objective",
    "ParamDistribution",
    "SearchSpace",
    "SearchSpaceError",
    "list_presets",
    "load_space",
    "parse_space",
    "preset_names",
    "validation_problems",
]

_PRESETS = files(__name__) / "presets"


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(p.name.removesuffix(".json") for p in _PRESETS.iterdir()
                  if p.name.endswith(".json"))


def list_presets() -> dict[str, str]:
    """Preset name → description, for every shipped preset (each one validated)."""
    return {name: load_space(name).description for name in preset_names()}


def parse_space(data: Any, source: str = "<inline>") -> SearchSpace:
    """Validate an inline space (a dict, as parsed from JSON); ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise SearchSpaceError(source, [("", f"must be a JSON object, got {_json_type(data)}")])
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        raise SearchSpaceError(source, validation_problems(err)) from None


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A preset by name (see ``list_presets``), or a space from a ``.json`` file.

    A string containing a path separator or ending in ``.json`` is a file; anything
    else is a preset name, and an unknown one lists the valid presets.
    """
    text = os.fspath(name_or_path)
    is_path = (isinstance(name_or_path, os.PathLike) or "/" in text or os.sep in text
               or text.lower().endswith(".json"))
    if is_path:
        return parse_space(_read_json(Path(text), text), text)
    if text not in preset_names():
        raise SearchSpaceError(repr(text), [("", (
            f"unknown preset; valid: {', '.join(preset_names())} "
            "(a file must be given as a path ending in .json)"))])
    source = f"search_spaces/presets/{text}.json"
    resource = _PRESETS / f"{text}.json"
    try:
        data = _parse_json(resource.read_text(encoding="utf-8"), source)
    except UnicodeDecodeError:
        raise SearchSpaceError(source, [("", "not UTF-8 text")]) from None
    space = parse_space(data, source)
    if space.name != text:
        raise SearchSpaceError(source, [("name", f"{space.name!r} differs from the file name")])
    return space


def _read_json(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SearchSpaceError(source, [("", "file not found")]) from None
    except IsADirectoryError:
        raise SearchSpaceError(source, [("", "is a directory, not a JSON file")]) from None
    except UnicodeDecodeError:
        raise SearchSpaceError(source, [("", "not UTF-8 text")]) from None
    except OSError as err:
        raise SearchSpaceError(source, [("", f"cannot be read: {err.strerror}")]) from None
    return _parse_json(text, source)


def _parse_json(text: str, source: str) -> Any:
    """Strict JSON: no NaN/Infinity, no repeated keys (the second would silently win)."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed (numbers must be finite)")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, parse_constant=constant, object_pairs_hook=unique)
    except json.JSONDecodeError as err:
        reason = f"{err.msg} at line {err.lineno} column {err.colno}"
        raise SearchSpaceError(source, [("", f"not valid JSON: {reason}")]) from None
    except ValueError as err:
        raise SearchSpaceError(source, [("", f"not valid JSON: {err}")]) from None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)
