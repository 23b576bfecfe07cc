"""What a user sees first: listings that fit the terminal, presets as JSON, fast answers
(no torch/Ray/MLflow/Optuna imported for listings and bad input), no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import parse_space, preset_names

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "mlflow", "optuna")


def credit(*args: str, columns: int = 80, home: Path | None = None):
    env = dict(os.environ, COLUMNS=str(columns))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if home is not None:
        env["CREDIT_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["rules", "experiments", "datasets", "spaces"])
@pytest.mark.parametrize("columns", [60, 100])
def test_listings_wrap_to_the_terminal(command: str, columns: int) -> None:
    proc = credit(command, columns=columns)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines and all(len(line) <= columns for line in lines), max(map(len, lines))
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    if command == "spaces":
        assert names == preset_names()
    # the words are all there, just wrapped: rejoined, each entry reads as one line
    assert len(" ".join(proc.stdout.split())) > 40 * len(names)


def test_spaces_show_prints_a_preset_that_parses_back() -> None:
    proc = credit("spaces", "show", "mnist-fc-node-perturbation")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    space = parse_space(data)
    assert space.name == "mnist-fc-node-perturbation"
    assert set(data["params"]) == {"lr", "noise_std", "feedback_lr"}


def test_spaces_show_unknown_lists_the_presets() -> None:
    proc = credit("spaces", "show", "bogus")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown preset; valid: cifar10-cnn-backprop" in lines[0]


def test_a_closed_pipe_is_no_traceback() -> None:
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        f"{sys.executable} -m service.cli spaces | head -1", shell=True, cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["rules"], 0),
    (["experiments"], 0),
    (["datasets"], 0),
    (["spaces"], 0),
    (["spaces", "show", "mnist-fc-backprop"], 0),
    (["train", "--rule", "bogus"], 2),
    (["train", "--noise-std", "-1"], 2),
    (["train", "--experiment", "mnist-fc", "--dataset", "cifar10"], 2),
    (["search", "--space", "bogus"], 2),
    (["search", "--space", "mnist-fc-node-perturbation", "--trials", "0"], 2),
    (["search", "--space", "mnist-fc-node-perturbation", "--sampler", "nope"], 2),
    (["paper", "bogus"], 2),
])
def test_listings_and_bad_input_import_nothing_heavy(argv: list[str], code: int,
                                                     tmp_path: Path) -> None:
    """The 1-second answers of issue #11 come from not importing torch, Ray, MLflow or
    Optuna (2-5 s on this machine) before the arguments are checked."""
    script = (
        "import sys\n"
        "from service.cli import main\n"
        f"rc = main({argv!r})\n"
        "heavy = sorted(m for m in " + repr(HEAVY) + " if m in sys.modules)\n"
        "print(f'RC {rc} HEAVY {heavy}', file=sys.stderr)\n"
    )
    env = dict(os.environ, CREDIT_HOME=str(tmp_path), PYTHONPATH=str(REPO))
    env.pop("CREDIT_URL", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"RC {code} HEAVY []", proc.stderr


def test_report_curves_with_an_epoch_no_seed_reached_warn_nothing() -> None:
    import warnings

    import numpy as np

    from service.paper.figures import curve as _curve
    from service.paper.figures import nanmin as _nanmin

    history = np.array([[1.0, 0.5, np.nan], [2.0, np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epochs, mean, sem = _curve(history)
        assert _nanmin([np.nan, np.nan]) != _nanmin([np.nan, np.nan])  # NaN
        assert _nanmin([np.nan, 3.0, 2.0]) == 2.0
    assert list(epochs) == [1, 2, 3]
    assert mean[0] == 1.5 and mean[1] == 0.5 and np.isnan(mean[2])
