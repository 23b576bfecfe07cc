"""``credit search`` and ``credit spaces``, run for real in a subprocess: the presets,
one-line errors for bad input (before Ray starts), and a tiny study on the real
two-node Ray cluster with real MLflow and Optuna stores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRESETS = [
    "cifar10-cnn-backprop",
    "cifar10-cnn-direct-feedback-alignment",
    "cifar10-cnn-node-perturbation-direct",
    "mnist-autoencoder-backprop",
    "mnist-autoencoder-backprop-adam",
    "mnist-autoencoder-feedback-alignment",
    "mnist-autoencoder-matched",
    "mnist-autoencoder-node-perturbation",
    "mnist-autoencoder-synthetic-gradient",
    "mnist-fc-backprop",
    "mnist-fc-feedback-alignment",
    "mnist-fc-node-perturbation",
]


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment (so a subprocess joins ``ray_cluster`` if it runs)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # a 2-core machine: no spinning thread pools
    env["COLUMNS"] = "1000"  # listings wrap to the terminal: one line per entry here
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def credit(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``python -m service.cli ARGS`` and capture its text output."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=cwd, env=env or _env(),
        capture_output=True, text=True, timeout=timeout,
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("credit: error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- spaces


def test_spaces_lists_every_preset(tmp_path: Path) -> None:
    proc = credit("spaces", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == PRESETS
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each has a description


# --------------------------------------------------------------------------- bad input

LOW_NOT_BELOW_HIGH = {
    "name": "inverted", "experiment": "mnist-fc", "rule": "backprop",
    "params": {"lr": {"type": "float", "low": 0.5, "high": 0.5}},
}
FILES = {"bad.json": '{"name": "bad", "params": {', "inverted.json": json.dumps(LOW_NOT_BELOW_HIGH)}
SPACE = ["--space", "mnist-fc-backprop"]

BAD_SEARCH_INPUTS = {
    "unknown preset": (["--space", "mnist-fc-backprob"],
                       ["'mnist-fc-backprob'", "unknown preset", *PRESETS]),
    "missing --space": ([], ["--space"]),
    "space file missing": (["--space", "nowhere.json"], ["nowhere.json", "not found"]),
    "space file not JSON": (["--space", "bad.json"], ["bad.json", "not valid JSON"]),
    "low not below high": (["--space", "inverted.json"],
                           ["inverted.json", "params.lr", "low must be < high"]),
    "zero trials": ([*SPACE, "--trials", "0"], ["--trials", ">= 1", "0"]),
    "zero concurrency": ([*SPACE, "--concurrency", "0"], ["--concurrency", ">= 1"]),
    "grid sampler": ([*SPACE, "--sampler", "grid"], ["--sampler", "'grid'", "random", "tpe"]),
    "negative epochs": ([*SPACE, "--epochs", "-1"], ["--epochs", ">= 1", "-1"]),
    "dataset mismatch": ([*SPACE, "--dataset", "cifar10"], ["'cifar10'", "mnist-fc", "mnist-5k"]),
    "path as name": ([*SPACE, "--name", "../x"], ["--name", "lowercase letters"]),
    "resume without name": ([*SPACE, "--resume"], ["--resume", "--name"]),
    "resume unknown study": ([*SPACE, "--resume", "--name", "never-ran"],
                             ["'never-ran'", "resume"]),
    "zero cpus per trial": ([*SPACE, "--cpus-per-trial", "0"], ["cpu", "> 0"]),
    "not a number": ([*SPACE, "--trials", "two"], ["--trials", "'two'"]),
    "unknown flag": ([*SPACE, "--colour", "red"], ["--colour"]),
}


@pytest.mark.parametrize("args, expected", BAD_SEARCH_INPUTS.values(), ids=BAD_SEARCH_INPUTS)
def test_bad_search_input_exits_2_with_one_line(tmp_path: Path, args: list[str],
                                                expected: list[str]) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    ray_tmp = tmp_path / "ray"
    # No RAY_ADDRESS: had the command reached Ray, it would have started a private
    # cluster in CREDIT_RAY_TMP, which must therefore never appear.
    env = {k: v for k, v in _env(CREDIT_RAY_TMP=str(ray_tmp)).items() if k != "RAY_ADDRESS"}
    stores = ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
              "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    start = time.perf_counter()
    proc = credit("search", *args, *stores, cwd=tmp_path, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    for text in expected:
        assert text in line, line
    assert proc.stdout == ""
    assert not ray_tmp.exists(), "Ray was started for input that fails validation"
    assert elapsed < 20


# --------------------------------------------------------------------------- a real study


@pytest.fixture(scope="module")
def tiny_search(ray_cluster, tmp_path_factory):
    """One tiny study through the CLI on the two-node cluster; the same call again after."""
    tmp = tmp_path_factory.mktemp("cli-search")
    args = ["search", "--space", "mnist-fc-backprop", "--trials", "2", "--concurrency", "2",
            "--epochs", "1", "--batches-per-epoch", "5", "--dataset", "mnist-5k",
            "--json", "out.json", "--tracking-uri", f"sqlite:///{tmp / 'm.db'}",
            "--storage", f"sqlite:///{tmp / 'o.db'}", "--name", "cli-tiny"]
    first = credit(*args, cwd=tmp, timeout=300)
    start = time.perf_counter()
    again = credit(*args, cwd=tmp, timeout=120)
    return {"first": first, "again": again, "again_s": time.perf_counter() - start,
            "dir": tmp}


def _table(stdout: str) -> dict[str, str]:
    best = re.search(r"^best test_error \(min\): (\S+)$", stdout, re.M)
    lr = re.search(r"^  lr\s+(\S+)$", stdout, re.M)
    run = re.search(r"^MLflow run of the best trial: (\S+)$", stdout, re.M)
    assert best and lr and run, stdout
    return {"best": best.group(1), "lr": lr.group(1), "run": run.group(1)}


def test_search_prints_the_best_configuration(tiny_search) -> None:
    proc = tiny_search["first"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.splitlines()[0] == "study cli-tiny: SUCCEEDED", out
    assert "trials: 2 complete, 0 failed, 0 pruned" in out
    table = _table(out)
    assert re.fullmatch(r"[0-9a-f]{32}", table["run"]), table["run"]
    assert 0.0003 <= float(table["lr"]) <= 0.3  # the preset's range
    assert 0.0 <= float(table["best"]) <= 1.0


def test_search_json_matches_the_table(tiny_search) -> None:
    proc = tiny_search["first"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tiny_search["dir"] / "out.json").read_text())
    table = _table(proc.stdout)
    assert result["name"] == "cli-tiny"
    assert result["status"] == "SUCCEEDED"
    assert len(result["trials"]) == 2
    assert [t["state"] for t in result["trials"]] == ["COMPLETE", "COMPLETE"]
    assert result["counts"]["complete"] == 2
    assert f"{result['best_params']['lr']:.6g}" == table["lr"]
    assert f"{result['best_value']:.6g}" == table["best"]
    assert result["best_run_id"] == table["run"]
    assert result["best_value"] == min(t["value"] for t in result["trials"])


def test_search_shows_live_progress(tiny_search) -> None:
    proc = tiny_search["first"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trials 2/2: 2 complete" in proc.stderr
    assert "trials 2/2" not in proc.stdout  # progress is for the terminal, not the result
    assert "Traceback" not in proc.stderr


def test_search_refuses_a_taken_name(tiny_search) -> None:
    proc = tiny_search["again"]
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert "'cli-tiny'" in line and "taken" in line
    assert proc.stdout == ""
    assert tiny_search["again_s"] < 20


def test_search_prints_no_third_party_log_lines(tiny_search) -> None:
    """Ray's INFO/WARNING lines and Optuna's "[I ...] A new study created" stay out."""
    proc = tiny_search["first"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in (proc.stdout + proc.stderr).splitlines()
             if re.match(r"^\[[IWD] \d{4}-", line)  # optuna
             or re.search(r"\b(INFO|WARNING|DEBUG)\b \S+\.py:\d+ --", line)  # ray
             or "Warning:" in line]
    assert not noise, noise


@pytest.mark.slow  # ~40 s: out of the default run (15-minute aim), CI runs it
def test_search_quiet_tells_a_restart_once(ray_cluster, tmp_path: Path) -> None:
    """``credit search --quiet`` while its trial's worker is SIGKILLed after the first
    epoch: the driver's restart line appears once, and Ray's ``(raylet) ...`` notice of
    the dead worker (which retold the same death) not at all, nor a "marked dead" one."""
    from tests.service.processes import KILLED_TRIAL_EPOCHS
    from tests.service.test_study import _kill_after_first_epoch

    args = ["search", "--quiet", "--space", "mnist-fc-backprop", "--trials", "1",
            "--epochs", str(KILLED_TRIAL_EPOCHS), "--batches-per-epoch", "150",
            "--dataset", "mnist-5k",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--name", "cli-restart"]
    box: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_after_first_epoch, args=(box, tmp_path, stop),
                              daemon=True)
    killer.start()
    try:
        proc = credit(*args, cwd=tmp_path, timeout=300)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert "killed_at" in box, "no trial worker was found to kill"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study cli-restart: SUCCEEDED" in proc.stdout
    lines = (proc.stdout + proc.stderr).splitlines()
    restarts = [line for line in lines if ": restart " in line]
    assert len(restarts) == 1 and ": restart 1 of 3 from its last checkpoint" in restarts[0], \
        (lines, box)
    assert not [line for line in lines if "(raylet)" in line or "marked dead" in line], lines
