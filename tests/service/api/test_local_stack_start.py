"""Starting the local stack's parts together: one deadline, progress lines, and on a
failure the component's name, reason and the last lines of its log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.local.stack import MlflowServer
from service.local.startup import ComponentError, log_tail, start_together


def test_parts_start_concurrently_and_report_progress() -> None:
    lines: list[str] = []
    begin = time.monotonic()
    took = start_together([("A", lambda t: time.sleep(1.5), None),
                           ("B", lambda t: time.sleep(1.5), None)],
                          timeout_s=30, report=lines.append, every_s=0.5)
    elapsed = time.monotonic() - begin
    assert elapsed < 2.9, elapsed  # together, not one after the other (3 s)
    assert set(took) == {"A", "B"}
    assert any(line.startswith("  A: starting ... ") for line in lines), lines
    assert "  A: up in 2 s" in lines or "  A: up in 1 s" in lines, lines


def test_a_failing_part_names_itself_and_shows_its_log(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "Error: port taken\n")

    def fail(timeout_s: float) -> None:
        raise RuntimeError("exited with code 1")

    with pytest.raises(ComponentError) as info:
        start_together([("A", lambda t: time.sleep(0.2), None), ("B", fail, log)],
                       timeout_s=30, report=lambda line: None)
    err = info.value
    assert err.component == "B"
    assert str(err) == f"B did not start: exited with code 1 (log: {log})"
    assert err.log_lines[-1] == "Error: port taken" and len(err.log_lines) == 12


def test_mlflow_that_cannot_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    """A real ``mlflow server`` on a store it cannot open: its process exits, and the
    error comes at once (not at the deadline) with MLflow's own last lines."""
    log = tmp_path / "mlflow.log"
    server = MlflowServer("bogus://nowhere", tmp_path / "artifacts", log_file=log)
    begin = time.monotonic()
    with pytest.raises(ComponentError) as info:
        start_together([("MLflow", server.start, log)], timeout_s=300,
                       report=lambda line: None)
    assert time.monotonic() - begin < 120
    assert "the process serving it exited" in str(info.value)
    assert info.value.log_lines and info.value.log_lines == log_tail(log)
