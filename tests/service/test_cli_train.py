"""The ``credit`` command line, run for real in a subprocess: train, the catalogues, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.cli import main
from service.commands.actions.train import format_summary

REPO = Path(__file__).resolve().parents[2]
RULE_NAMES = [
    "backprop", "direct_feedback_alignment", "feedback_alignment", "kolen_pollack",
    "matched", "node_perturbation", "node_perturbation_direct", "synthetic_gradient",
]
FAST = ["--epochs", "1", "--batches-per-epoch", "5", "--quiet"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One intra-op thread: with the default two on this 2-core machine, a busy neighbour
    # makes torch's thread pool spin and a tiny-MLP epoch ~70x slower.
    env["OMP_NUM_THREADS"] = "1"
    env["COLUMNS"] = "1000"  # listings wrap to the terminal: one line per entry here
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def credit(*args: str, cwd: Path | None = None, timeout: float = 120):
    """Run ``python -m service.cli ARGS`` and capture its text output."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=cwd or REPO, env=_env(),
        capture_output=True, text=True, timeout=timeout,
    )


# --------------------------------------------------------------------------- train


def test_train_writes_json_and_prints_table(tmp_path: Path) -> None:
    proc = credit(
        "train", "--experiment", "mnist-fc", "--rule", "node_perturbation",
        "--dataset", "mnist-5k", "--epochs", "2", "--lr", "0.1", "--momentum", "0.9",
        "--json", "out.json", "--quiet", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress bar

    result = json.loads((tmp_path / "out.json").read_text())
    assert result["config"]["rule"] == "node_perturbation"
    assert result["config"]["epochs"] == 2
    assert result["config"]["momentum"] == 0.9
    assert result["config"]["noise_std"] == 0.01  # TrainConfig's default, not the CLI's
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for entry in history:
        for key in ("test_error", "test_loss", "train_loss", "angle/fc2", "angle/fc3",
                    "update_angle/fc1", "relative_error/fc2", "sign_congruence/fc2"):
            assert math.isfinite(entry[key]), key
        assert 0.0 <= entry["test_error"] <= 1.0
        assert 0.0 <= entry["angle/fc2"] <= 180.0
    last = {k: v for k, v in history[-1].items() if k != "epoch"}
    assert {k: result["final"][k] for k in last} == last
    assert result["final"]["epochs"] == 2

    out = proc.stdout
    assert "test error" in out and "fc2" in out and "wall time" in out
    assert f"{100 * result['final']['test_error']:.2f} %" in out
    fc2_row = next(line for line in out.splitlines() if line.startswith("fc2"))
    assert f"{result['final']['angle/fc2']:.2f}" in fc2_row


def test_zero_learning_rate_is_accepted(tmp_path: Path) -> None:
    proc = credit("train", "--lr", "0", *FAST, "--json", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())["config"]["lr"] == 0.0


def test_progress_bar_goes_to_stderr() -> None:
    proc = credit("train", "--epochs", "2", "--batches-per-epoch", "25")
    assert proc.returncode == 0, proc.stderr
    assert "50/50" in proc.stderr and "test_error=" in proc.stderr
    assert "50/50" not in proc.stdout and "test error" in proc.stdout


def test_divergence_exits_1_with_one_line() -> None:
    proc = credit("train", "--rule", "backprop", "--lr", "1000", "--epochs", "1", "--quiet")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("credit: training diverged in epoch 1")


def test_ctrl_c_exits_130_with_one_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "train", "--epochs", "10000"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT as a terminal's Ctrl-C finds it: a test run started in the background by
        # a shell without job control inherits it ignored, and Python then ignores it too
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Wait for the progress bar's unit: training has begun (not merely an import
        # or a warning on stderr — an interrupt during start-up is another story).
        seen = b""
        deadline = time.monotonic() + 120
        while b"batch" not in seen and time.monotonic() < deadline:
            chunk = os.read(proc.stderr.fileno(), 256)
            assert chunk, f"credit exited before training: {seen!r}"
            seen += chunk
        assert b"batch" in seen, seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "credit: interrupted"
    assert "Traceback" not in err


# --------------------------------------------------------------------------- bad input

BAD_TRAIN_INPUTS = {
    "unknown rule": (["--rule", "backprob"], ["'backprob'", "backprop", "node_perturbation"]),
    "unknown experiment": (["--experiment", "mnist-cnn"], ["'mnist-cnn'", "mnist-fc"]),
    "unknown dataset": (["--dataset", "fashion"], ["'fashion'", "mnist-5k"]),
    "dataset mismatch": (["--dataset", "cifar10"], ["'cifar10'", "mnist-fc", "mnist-5k"]),
    "zero noise": (["--noise-std", "0"], ["--noise-std", "> 0"]),
    "negative noise": (["--noise-std", "-1"], ["--noise-std", "> 0", "-1"]),
    "negative lr": (["--lr", "-0.1"], ["--lr", ">= 0", "-0.1"]),
    "zero epochs": (["--epochs", "0"], ["--epochs", ">= 1"]),
    "missing data dir": (
        ["--data-dir", "/nonexistent/dir", "--dataset", "mnist"], ["/nonexistent/dir"]
    ),
    "unknown optimizer": (["--optimizer", "sgdd"], ["--optimizer", "'sgdd'", "adam"]),
    "unknown solver": (["--feedback-solver", "foo"], ["--feedback-solver", "'foo'", "lstsq"]),
    "not a number": (["--lr", "abc"], ["--lr", "'abc'"]),
    "unknown flag": (["--learning-rate", "0.1"], ["--learning-rate"]),
    "missing value": (["--seed"], ["--seed"]),
    "momentum of 1": (["--momentum", "1"], ["--momentum", "< 1"]),
    "width of mnist-fc": (["--hidden-width", "30"], ["--hidden-width", "mnist-autoencoder"]),
    "unknown output activation": (["--output-activation", "tanh"],
                                  ["--output-activation", "'identity'", "'relu'"]),
    "unknown init": (["--init", "xavier"], ["--init", "'authors'"]),
    "unknown loss reduction": (["--loss-reduction", "max"], ["--loss-reduction", "'sum'"]),
}


@pytest.mark.parametrize("args, expected", BAD_TRAIN_INPUTS.values(), ids=BAD_TRAIN_INPUTS)
def test_bad_train_input_exits_2_with_one_line(args: list[str], expected: list[str]) -> None:
    # The bad option comes last, so it overrides FAST's value where both set it.
    proc = credit("train", *FAST, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("credit: error: ")
    for text in expected:
        assert text in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("argv", [[], ["trian"], ["rules", "--all"], ["--quiet", "rules"]])
def test_bad_command_line_returns_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("credit: error: ")


# --------------------------------------------------------------------------- catalogues


def test_rules_lists_every_rule() -> None:
    proc = credit("rules")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == RULE_NAMES
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each has a description


def test_experiments_list_datasets_and_default() -> None:
    proc = credit("experiments")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.strip().splitlines()}
    assert sorted(lines) == ["cifar10-cnn", "mnist-autoencoder", "mnist-fc"]
    assert "datasets: mnist, mnist-5k (default: mnist-5k)" in lines["mnist-fc"]
    assert "datasets: cifar10 (default: cifar10)" in lines["cifar10-cnn"]


def test_datasets_lists_every_dataset() -> None:
    proc = credit("datasets")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.strip().splitlines()]
    assert names == ["cifar10", "mnist", "mnist-5k"]


def test_version_and_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("credit ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "rules", "experiments", "datasets"):
        assert command in out


def test_every_config_field_has_a_flag_with_its_default(capsys: pytest.CaptureFixture) -> None:
    from service.commands.options import flag
    from trainables.config import TrainConfig

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, info in TrainConfig.model_fields.items():
        assert flag(name) in text, name
        if info.default is not None and info.annotation is not bool:
            assert f"(default: {info.default})" in text, name
    assert "--momentum MOMENTUM SGD momentum (>= 0, < 1) (default: 0.0)" in text
    assert "--optimizer {sgd,adam}" in text


def test_summary_groups_metrics_by_layer() -> None:
    final = {
        "train_loss": 0.5, "test_loss": 0.25, "test_error": 0.0312, "angle/fc2": 45.0,
        "relative_error/fc2": 0.5, "update_angle/fc1": 30.0, "epochs": 3,
        "best_test_loss": 0.2, "best_test_error": 0.03, "time_s": 1.5,
    }
    config = {"experiment": "mnist-fc", "rule": "matched", "dataset": "mnist-5k",
              "epochs": 3, "seed": 1}
    text = format_summary(config, final, ["fc1", "fc2", "fc3"], wall_s=2.0)
    lines = text.splitlines()
    assert "3.12 %" in text and "(best 3.00 %)" in text
    fc1 = next(line for line in lines if line.startswith("fc1"))
    fc2 = next(line for line in lines if line.startswith("fc2"))
    assert fc1.split() == ["fc1", "-", "-", "30.00"]
    assert fc2.split() == ["fc2", "45.00", "0.5000", "-"]
    assert not any(line.startswith("fc3") for line in lines)  # no metrics for it
    assert lines[-1] == "wall time 2.0 s (training 1.5 s)"
