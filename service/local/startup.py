"""The local stack's parts started together, under one deadline, with a progress line
per part and, if one fails, the end of its log (``start_together``)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.local.stack import StackError


def log_tail(path: Path | None, lines: int = 12) -> list[str]:
    """The last ``lines`` non-empty lines of a log file (none if it cannot be read)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class ComponentError(StackError):
    """One component did not start: ``component`` names it, ``log_lines`` end its log."""

    def __init__(self, component: str, reason: str, log_file: Path | None):
        self.component = component
        self.log_file = log_file
        self.log_lines = log_tail(log_file)
        where = f" (log: {log_file})" if log_file else ""
        super().__init__(f"{component} did not start: {reason}{where}")


def start_together(components: list[tuple[str, Callable[[float], object], Path | None]],
                   timeout_s: float, report: Callable[[str], None],
                   every_s: float = 10.0) -> dict[str, float]:
    """Start every ``(name, start, log_file)`` at once, each in a thread, all under one
    deadline of ``timeout_s``; ``start(remaining_s)`` returns once its component answers.

    While waiting, ``report`` gets one line per component still starting every
    ``every_s`` seconds, and one when it is up. The first failure raises
    ``ComponentError`` (its log's last lines attached); the caller stops the others.
    Returns each component's start-up time in seconds.
    """
    begin = time.monotonic()
    done: dict[str, float] = {}
    failed: list[ComponentError] = []
    changed = threading.Event()

    def run(name: str, start: Callable[[float], object], log_file: Path | None) -> None:
        try:
            start(timeout_s)
            done[name] = time.monotonic() - begin
        except Exception as error:  # any failure to start is that component's failure
            failed.append(ComponentError(name, str(error) or type(error).__name__, log_file))
        changed.set()

    threads = [threading.Thread(target=run, args=c, name=f"start-{c[0]}", daemon=True)
               for c in components]
    for t in threads:
        t.start()
    reported: set[str] = set()
    next_progress = begin + every_s
    while True:
        changed.wait(timeout=max(0.0, min(1.0, next_progress - time.monotonic())))
        changed.clear()
        for name, took in list(done.items()):
            if name not in reported:
                reported.add(name)
                report(f"  {name}: up in {took:.0f} s")
        if failed:
            raise failed[0]
        if len(done) == len(components):
            return done
        now = time.monotonic()
        if now >= begin + timeout_s + 5:  # a start() that overran its own deadline
            late = [c[0] for c in components if c[0] not in done][0]
            log_file = next(c[2] for c in components if c[0] == late)
            raise ComponentError(late, f"not up within {timeout_s:.0f} s", log_file)
        if now >= next_progress:
            next_progress = now + every_s
            for name, _, _ in components:
                if name not in done:
                    report(f"  {name}: starting ... {now - begin:.0f} s "
                           f"(deadline {timeout_s:.0f} s)")
