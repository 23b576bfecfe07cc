"""The one reader of tracebacks: the innermost exception of a (remote) traceback or log.

A trial's error reaches the driver as a remote traceback, a study's as its driver's
log. :func:`failure_reason` keeps the innermost exception whole — its type and every
line of its message (Tune's "Unable to set up cluster storage" names the storage
settings on the lines after the first); :func:`exception_line` is its first line, the
reason a study's driver failed.
"""

from __future__ import annotations

import re

#: Longest reason kept (MLflow tags hold 5,000 characters).
MAX_CHARS = 5000
#: Longest one-line reason (a study's message).
LINE_CHARS = 500

# "RuntimeError: msg", "ray.exceptions.RayTaskError(RuntimeError): msg", "mod.XError: msg"
EXCEPTION_START = re.compile(
    r"^(?:[\w.]+\.)?(?P<wrapper>\w+(?:Error|Exception|Exit|Interrupt))"
    r"(?:\((?P<inner>[\w.]+)\))?: ?(?P<message>.*)$")


def failure_reason(text: str) -> str:
    """The innermost exception of a traceback as ``Type: message`` (every line of it);
    the last line of ``text`` when it holds no exception."""
    lines = text.strip().splitlines()
    start = None
    for i, line in enumerate(lines):
        if line.startswith((" ", "\t", "Traceback")):
            continue
        if EXCEPTION_START.match(line.strip()):
            start = i
    if start is None:
        body = [ln for ln in lines if ln.strip()]
        return (body[-1].strip() if body else "trial failed")[:MAX_CHARS]
    m = EXCEPTION_START.match(lines[start].strip())
    kind = (m.group("inner") or m.group("wrapper")).rsplit(".", 1)[-1]
    rest = [ln.rstrip() for ln in lines[start + 1:]]
    message = "\n".join([m.group("message").strip(), *rest]).strip()
    return f"{kind}: {message}"[:MAX_CHARS] if message else kind


def reason_of_exception(error: BaseException) -> str:
    """``Type: message`` of an exception; a remote one (its text a traceback) by its cause."""
    text = str(error).strip()
    if any(EXCEPTION_START.match(line) for line in text.splitlines()):
        return failure_reason(text)  # a remote traceback: its innermost exception
    return f"{type(error).__name__}: {text}"[:MAX_CHARS] if text else type(error).__name__


def exception_line(text: str) -> str:
    """The innermost exception of a log as one line (``Type: message``), "" if none."""
    lines = [ln for ln in text.strip().splitlines()
             if not ln.startswith((" ", "\t")) and EXCEPTION_START.match(ln.strip())]
    if not lines:
        return ""
    # the last exception line alone: what follows it in a log is not its message
    return failure_reason(lines[-1]).splitlines()[0][:LINE_CHARS]
