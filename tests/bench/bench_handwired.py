"""``credit search`` against the same search hand-wired with Ray Tune, Optuna and MLflow.

    python -m tests.bench.bench_handwired [--trials 8] [--epochs 3] [--concurrency 2]
        [--repeats 2]

The search: node perturbation's preset space (η, c, η_B) on mnist-5k, TPE (seed 0),
T trials of E full epochs, C at once, every trial an MLflow run (sqlite store). Each
arm is one new process, timed from its start to its exit (Python, Ray's start, the
search, its records), on a private Ray cluster of the machine's CPUs:

- ``credit search``: the product's CLI (its Tune trials, checkpoints every epoch, MLflow
  parent and child runs with plots, Optuna storage, the study's table and plots);
- hand-wired: what a user would write with the same libraries and no product: a Tune
  function trainable building the same ``Trainer`` and calling ``tune.report`` every
  epoch (no checkpoints), ``OptunaSearch`` over the same distributions, and Tune's
  ``MLflowLoggerCallback`` (one run per trial, metrics per epoch).

It prints each arm's walls (the median of ``--repeats``) and their ratio (issue "scale":
target ≤ 0.4 for 8 trials × 3 epochs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HANDWIRED = r'''
import sys, time
import optuna
import ray
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.search.optuna import OptunaSearch

trials, epochs, concurrency = (int(a) for a in sys.argv[1:4])
folder = sys.argv[4]


def trainable(config):
    from trainables.callbacks import Callback
    from trainables.config import TrainConfig
    from trainables.trainer import Trainer

    class Report(Callback):
        def on_epoch_end(self, trainer, metrics):
            tune.report(dict(metrics))

    cfg = TrainConfig(experiment="mnist-fc", rule="node_perturbation", dataset="mnist-5k",
                      epochs=epochs, batch_size=32, momentum=0.9, feedback_solver="sgd",
                      **config)
    Trainer(cfg, callbacks=[Report()]).fit()


space = {"lr": optuna.distributions.FloatDistribution(3e-4, 0.3, log=True),
         "noise_std": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
         "feedback_lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=folder + "/ray")
tuner = tune.Tuner(
    trainable,
    tune_config=tune.TuneConfig(
        metric="test_error", mode="min", num_samples=trials,
        search_alg=OptunaSearch(space, metric="test_error", mode="min",
                                sampler=optuna.samplers.TPESampler(seed=0)),
        max_concurrent_trials=concurrency),
    run_config=tune.RunConfig(
        name="handwired", storage_path=folder + "/tune", verbose=0,
        callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{folder}/mlflow.db",
                                        experiment_name="handwired")]),
)
grid = tuner.fit()
best = grid.get_best_result()
print("best test_error", best.metrics["test_error"], "trials", len(grid))
ray.shutdown()
'''


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    base["PYTHONPATH"] = str(root)
    walls: dict[str, list[float]] = {"credit search": [], "hand-wired": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="credit-bench-handwired-") as tmp:
            env = {**base, "CREDIT_HOME": f"{tmp}/home", "CREDIT_WARM_DIR": f"{tmp}/warm"}
            walls["credit search"].append(_timed(
                [sys.executable, "-m", "service.cli", "search", "--quiet",
                 "--space", "mnist-fc-node-perturbation", "--name", f"bench-{repeat}",
                 "--sampler", "tpe", "--seed", "0", "--trials", str(args.trials),
                 "--concurrency", str(args.concurrency), "--epochs", str(args.epochs),
                 "--dataset", "mnist-5k", "--no-asha"], env))
            walls["hand-wired"].append(_timed(
                [sys.executable, "-c", HANDWIRED, str(args.trials), str(args.epochs),
                 str(args.concurrency), tmp], env))
        print(f"repeat {repeat + 1}: credit search {walls['credit search'][-1]:.1f} s, "
              f"hand-wired {walls['hand-wired'][-1]:.1f} s", flush=True)
    ours, theirs = (statistics.median(walls[k]) for k in ("credit search", "hand-wired"))
    print(f"\n{args.trials} trials x {args.epochs} epochs, {args.concurrency} at once "
          f"(median of {args.repeats}): credit search {ours:.1f} s, hand-wired "
          f"{theirs:.1f} s; ratio {ours / theirs:.2f}x (target <= 0.4)")


if __name__ == "__main__":
    main()
