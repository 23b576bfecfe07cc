"""Headless Chromium (Debian's ``chromium``) for the browser tests: dump a page's DOM
after its scripts ran, or take a screenshot; or drive one over real time (``Browser``).
``.ci/run`` installs it when absent."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
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


class Browser:
    """One headless Chromium driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: commands in on fd 3, answers out on fd 4, each JSON
    message ended by a NUL byte), for pages watched over real time: open a URL, run
    JavaScript in it, take screenshots, as long as the page lives."""

    def __init__(self, width: int = 1280, height: int = 900):
        self.profile = tempfile.TemporaryDirectory(prefix="credit-chromium-")
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def fds() -> None:  # in the child: the pipe ends as fds 3 and 4
            a, b = os.dup(to_chrome), os.dup(from_chrome)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)  # its helpers: one group
        os.close(to_chrome)
        os.close(from_chrome)
        self._next, self._buffer = 0, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False, session=True)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 20)
                assert chunk, "chromium closed its DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                assert "error" not in answer, answer["error"]
                return answer.get("result", {})

    def sign_in(self, user: str, password: str) -> None:
        """Send HTTP Basic credentials with every request from now on, as the browser
        does once its sign-in prompt was answered (MLflow's ``basic-auth``)."""
        value = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.call("Network.enable", session=True)
        self.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {value}"},
                  session=True)

    def open(self, url: str, settle_s: float = 2.0) -> None:
        self.call("Page.navigate", url=url, session=True)
        time.sleep(settle_s)

    def js(self, expression: str):
        """The value of ``expression`` in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True, session=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60.0, every_s: float = 0.3):
        """The first truthy value of ``expression``, polled."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(every_s)
        raise AssertionError(f"{expression} stayed falsy for {timeout_s} s")

    def screenshot(self, out: Path, full_page: bool = True) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True,
                                                   **params)["data"]))
        assert out.stat().st_size > 1000
        return out

    def close(self) -> None:
        """Chromium closes itself (its helper processes end, its profile is flushed);
        whatever of its process group is left is killed; then its profile is removed
        (a helper that was still writing there made that fail once)."""
        try:
            self.call("Browser.close")
        except (AssertionError, OSError):  # it closed the pipe before answering
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for fd in (self._in, self._out):
            os.close(fd)
        for attempt in range(20):
            try:
                self.profile.cleanup()
                return
            except OSError:
                if attempt == 19:
                    raise
                time.sleep(0.25)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
