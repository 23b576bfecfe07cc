"""Headless Chromium (Debian's ``chromium``) for the browser tests: dump a page's DOM
after its scripts ran, or take a screenshot. ``.ci/run`` installs it when absent."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; "
                    ".ci/run does it)")
    return path


def _run(url: str, *extra: str, budget_ms: int = 15000, timeout: float = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="credit-chromium-") as profile:
        args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}", *extra, url]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump_dom(url: str, budget_ms: int = 15000) -> str:
    """The page's DOM once its scripts ran (``--virtual-time-budget`` ms of page time)."""
    return _run(url, "--dump-dom", budget_ms=budget_ms)


def screenshot(url: str, out: Path, size: str = "1280,900", budget_ms: int = 15000) -> Path:
    _run(url, f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars",
         budget_ms=budget_ms)
    assert out.exists() and out.stat().st_size > 1000
    return out
