"""One phrase per pydantic error: what is wrong with a value, in words.

Shared by every place that turns a ``ValidationError`` into a message for people
(the CLI's one-line errors, search-space files, the HTTP API).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def error_phrase(
    error: dict[str, Any],
    *,
    with_input: bool = True,
    unknown: str = "unknown key",
    show: Callable[[Any], str] = repr,
) -> str:
    """``must be > 0 (got -1.0)``, ``must be 'sgd' or 'adam' (got 'sgdd')``, ``unknown key``…

    Messages of our own validators (``ValueError`` text) are returned as they are.
    """
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return unknown
    if kind == "missing":
        return "required, but missing"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, op = _BOUNDS[kind]
        bound = ctx[key]
        text = f"must be {op} {bound:g}" if isinstance(bound, float) else f"must be {op} {bound}"
    elif kind == "literal_error":
        text = f"must be {ctx.get('expected', '?')}"
    else:
        msg = error["msg"].removeprefix("Input should be ")
        text = f"must be {msg}" if msg != error["msg"] else msg[:1].lower() + msg[1:]
    if with_input and "input" in error and not isinstance(error["input"], dict | list):
        text += f" (got {show(error['input'])})"
    return text
