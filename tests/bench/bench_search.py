"""The cost of the search machinery: N short trials run back to back with ``Trainer``
against the same trials run as a study through ``run_study`` (Ray Tune + Optuna + MLflow).

    python -m tests.bench.bench_search [--trials 8] [--epochs 2] [--batches 20] [--no-profile]
    python -m tests.bench.bench_search --population 12 [--trials 24] [--epochs 2]

mnist-fc backprop on mnist-5k. The baseline builds and fits one ``Trainer`` per
configuration in this process (Trainer setup included, as in a trial). The study
searches an inline space whose only parameter is a categorical ``lr`` over the same N
values (the cost of a trial does not depend on ``lr``: same shapes, same batches),
with concurrency 1 (comparable with the baseline) and then 2. It runs on a private
local Ray cluster, or on the cluster at ``RAY_ADDRESS``; MLflow and Optuna stores live
in a temporary directory. One-off costs (starting or joining Ray, creating the MLflow
store) are measured and printed apart and are not in the study times.

With ``--population K`` it measures populations instead (issue #17): the same random
search of the ``mnist-fc-node-perturbation`` space (η, c, η_B) on mnist-5k, full
epochs, two Ray trials at once, run with one configuration per Ray trial and then with
K per Ray trial (same sampler seed: the same configurations). It prints both walls,
their ratio (target ≤ 0.4) and both best configurations, which must be the same.

Target (issue #3): overhead ≤ 1 s per trial, where overhead = (study − baseline) / N.
Unless ``--no-profile``, it then breaks the overhead down: the timeline of the
concurrency-1 study from its MLflow runs; the driver's steps (Optuna, experiment-state
snapshots, MLflow records) timed by wrapping them in a third run; the same study with
the per-trial plots switched off (a what-if); a fresh Ray worker's start and imports;
and the in-process cost of each piece a trial adds around training (MLflow run and
metrics, plots, checkpoint files). The runner itself is never changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TARGET_S = 1.0


def lr_values(n: int) -> list[float]:
    """N distinct learning rates, log-spaced in [0.01, 0.3] (none diverges)."""
    if n == 1:
        return [0.05]
    return [round(0.01 * 30 ** (i / (n - 1)), 6) for i in range(n)]


def space(lrs: list[float]) -> dict[str, Any]:
    return {"name": "bench-search", "experiment": "mnist-fc", "rule": "backprop",
            "fixed": {"momentum": 0.9, "batch_size": 32},
            "params": {"lr": {"type": "categorical", "choices": lrs}}}


def make_spec(name: str, lrs: list[float], args, stores: dict[str, str], concurrency: int):
    from service.spec import StudySpec

    return StudySpec(name=name, space=space(lrs), max_trials=len(lrs),
                     parallel_trials=concurrency, epochs=args.epochs,
                     batches_per_epoch=args.batches, dataset="mnist-5k", seed=0, **stores)


# --------------------------------------------------------------------------- baseline
def baseline(configs) -> tuple[float, list[float]]:
    """Fit every config back to back in this process; total seconds, per-trial seconds."""
    from trainables.trainer import Trainer

    each = []
    start = time.perf_counter()
    for cfg in configs:
        t = time.perf_counter()
        Trainer(cfg).fit()
        each.append(time.perf_counter() - t)
    return time.perf_counter() - start, each


# --------------------------------------------------------------------------- profile
def timeline(result, study_start: float, study_end: float) -> dict[str, Any]:
    """Where a concurrency-1 study's wall time went, from its MLflow child runs.

    A child run starts in the trainer's ``on_fit_start`` (after the trial process and
    the Trainer are set up) and ends when the last epoch is logged (before the last
    checkpoint is reported). So: ``startup`` = study start → first run (driver setup,
    Ray actor start, imports); ``span - train`` = logging, plots and per-epoch reports
    inside a trial; ``gaps`` = last report of one trial → start of the next (Tune
    bookkeeping, searcher, actor reuse, trial setup); ``teardown`` = last run end →
    ``run_study`` returns (summaries, best trial, parent-run records). ``report`` is
    one epoch's ``tune.report`` with its checkpoint, seen in the trial: the time between
    two epochs' metric timestamps less the training time between them.
    """
    from mlflow.tracking import MlflowClient

    from service.records import tags
    from service.records import tracking as T

    runs = [r for r in T.child_runs(result.tracking_uri, result.experiment_id,
                                    result.parent_run_id)
            if r.data.tags.get(tags.ROLE) == "trial"]
    runs.sort(key=lambda r: r.info.start_time)
    client = MlflowClient(result.tracking_uri)
    spans, trains, gaps, reports = [], [], [], []
    for i, r in enumerate(runs):
        spans.append((r.info.end_time - r.info.start_time) / 1000)
        history = sorted(client.get_metric_history(r.info.run_id, "time_s"),
                         key=lambda m: m.step)
        trains.append(history[-1].value if history else 0.0)
        for a, b in zip(history, history[1:], strict=False):
            reports.append((b.timestamp - a.timestamp) / 1000 - (b.value - a.value))
        if i:
            gaps.append((r.info.start_time - runs[i - 1].info.end_time) / 1000)
    return {
        "startup": runs[0].info.start_time / 1000 - study_start,
        "spans": spans, "trains": trains, "gaps": gaps, "reports": reports,
        "teardown": study_end - runs[-1].info.end_time / 1000,
    }


class Timers:
    """Wraps functions in place to add up their calls and seconds (driver side)."""

    def __init__(self):
        self.labels: list[str] = []  # in the order wrapped
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        timers = self

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                timers.seconds[label] = timers.seconds.get(label, 0.0) + time.perf_counter() - t
                timers.calls[label] = timers.calls.get(label, 0) + 1

        self.labels.append(label)
        self._undo.append((owner, attr, original))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def driver_timers() -> Timers:
    """Time the driver's own steps of a study (the runner is not changed, only wrapped)."""
    import optuna
    from ray import tune

    # Ray's private checkpoint manager: timed here, never used by the service
    from ray.tune.execution.experiment_state import (
        _ExperimentCheckpointManager,  # noqa: PLC2701
    )
    from ray.tune.execution.tune_controller import TuneController

    import service.runner.study as S
    from service.records import study_runs as R
    from service.records import tracking as T
    from service.runner.searcher import OptunaAskTell

    timers = Timers()
    for owner, attr, label in (
        (T, "ensure_experiment", "MLflow experiment (exists)"),
        (R, "open_study_run", "parent MLflow run"),
        (S, "open_storage", "Optuna storage (open)"),
        (S, "connect_ray", "connect_ray"),
        (S, "new_tuner", "Tuner construction"),
        (tune.Tuner, "fit", "Tuner.fit (all trials)"),
        (OptunaAskTell, "suggest", "  Optuna suggest (ask)"),
        (optuna.study.Study, "tell", "  Optuna tell"),
        (_ExperimentCheckpointManager, "sync_up_experiment_state",
         "  experiment-state snapshots (save + sync)"),
        (TuneController, "save_to_dir", "    of which written (save_to_dir)"),
        (R, "close_stale_runs", "close stale MLflow runs"),
        (S, "trial_summaries", "trial summaries"),
        (S, "best_of", "best trial (Optuna + MLflow search)"),
        (S, "record_best", "record best on parent run"),
    ):
        timers.wrap(owner, attr, label)
    return timers


def without_plots() -> type:
    """A ``TrialLoggerFactory`` whose loggers skip the per-trial plots (a what-if)."""
    from service.records import trial_logger as TL

    class NoPlotsLogger(TL.MlflowTrialLogger):
        def _log_plots(self, trainer) -> None:
            pass

    class NoPlotsFactory(TL.TrialLoggerFactory):
        def __call__(self, config, trial_id: str) -> list:
            return [NoPlotsLogger(self.tracking_uri, self.experiment_id, self.parent_run_id,
                                  self.study, trial_id, self.role)]

    return NoPlotsFactory


def actor_start_cost(config: dict[str, Any]) -> dict[str, float]:
    """A fresh Ray worker process: start, import what a trial imports, then plot twice."""
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def ready(self) -> float:
            return time.time()

        def imports(self) -> float:
            t = time.perf_counter()
            import service.records.tracking  # noqa: F401  (MLflow)
            import trainables.tune  # noqa: F401  (torch, the trainer)

            return time.perf_counter() - t

        def plot(self, config: dict[str, Any]) -> float:
            from trainables import plots
            from trainables.config import TrainConfig
            from trainables.trainer import Trainer

            trainer = Trainer(TrainConfig(**config))
            trainer.fit()
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                plots.save_figures(plots.trial_figures(trainer.history, title="probe"), d)
            return time.perf_counter() - t

    t = time.time()
    probe = Probe.remote()
    started = ray.get(probe.ready.remote()) - t
    imports = ray.get(probe.imports.remote())
    first_plot = ray.get(probe.plot.remote(config))
    second_plot = ray.get(probe.plot.remote(config))
    ray.kill(probe)
    return {"start a worker (actor ready)": started,
            "imports (torch, trainer, MLflow)": imports,
            "first plots in that worker (imports matplotlib)": first_plot,
            "later plots in that worker": second_plot}


def component_costs(cfg, tmp: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds per trial of each piece a trial adds around ``Trainer.fit``, in-process."""
    from service.records import tracking as T
    from service.records import trial_logger as TL
    from trainables import plots
    from trainables.trainer import Trainer
    from trainables.tune import CHECKPOINT_FILE

    class NoPlots(TL.MlflowTrialLogger):
        def _log_plots(self, trainer: Trainer) -> None:
            pass

    out: dict[str, list[float]] = {k: [] for k in (
        "Trainer setup (data, model)", "fit (train + evaluate)",
        "checkpoint files, all epochs", "plots (figures + png)",
        "MLflow run + params + metrics (no plots)", "MLflow logger with plots")}
    uri = f"sqlite:///{tmp / 'profile-mlflow.db'}"
    exp = T.ensure_experiment(uri, "bench-profile", (tmp / "profile-artifacts").as_uri())
    parent = T.client(uri).create_run(exp).info.run_id
    for i in range(repeats):
        t = time.perf_counter()
        trainer = Trainer(cfg)
        setup = time.perf_counter() - t
        out["Trainer setup (data, model)"].append(setup)
        t = time.perf_counter()
        trainer.fit()
        fit = time.perf_counter() - t
        out["fit (train + evaluate)"].append(fit)
        t = time.perf_counter()
        for _ in range(cfg.epochs):
            with tempfile.TemporaryDirectory(dir=tmp) as d:
                trainer.save_checkpoint(Path(d) / CHECKPOINT_FILE)
        out["checkpoint files, all epochs"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=tmp) as d:
            plots.save_figures(plots.trial_figures(trainer.history, title="bench"), d)
        out["plots (figures + png)"].append(time.perf_counter() - t)
        for kind, key in ((NoPlots, "MLflow run + params + metrics (no plots)"),
                          (TL.MlflowTrialLogger, "MLflow logger with plots")):
            logger = kind(uri, exp, parent, "bench-profile", f"{key[:6]}-{i}")
            t = time.perf_counter()
            Trainer(cfg, callbacks=[logger]).fit()
            out[key].append(time.perf_counter() - t - setup - fit)
    return {k: statistics.median(v) for k, v in out.items()}


def profile(args, lrs, stores, configs, tmp: Path, reference, base_s: float) -> None:
    n = len(lrs)
    _, result, wall_start, wall_end = reference
    tl = timeline(result, wall_start, wall_end)
    in_run = [a - b for a, b in zip(tl["spans"], tl["trains"], strict=True)]
    print("\nwhere the concurrency-1 study's time went (timeline from its MLflow runs):")
    rows = [
        ("startup: run_study → first trial's MLflow run", tl["startup"], ""),
        ("training inside trials (Trainer time_s)", sum(tl["trains"]), ""),
        ("in-trial extras: logging, plots, reports", sum(in_run),
         f"median {statistics.median(in_run):.2f} s/trial"),
        ("  of which tune.report + checkpoint", sum(tl["reports"]),
         f"median {statistics.median(tl['reports'] or [0]):.3f} s/epoch"),
        ("between trials (report, Tune, searcher, setup)", sum(tl["gaps"]),
         f"median {statistics.median(tl['gaps'] or [0]):.2f} s/gap"),
        ("teardown: last trial → run_study returns", tl["teardown"], ""),
    ]
    for what, sec, note in rows:
        print(f"  {what:<50}{sec:7.2f} s  {note}")

    timers = driver_timers()
    spec = make_spec("bench-profile-c1", lrs, args, stores, 1)
    t = time.perf_counter()
    try:
        from service.runner.study import run_study

        run_study(spec)
    finally:
        timers.restore()
    total = time.perf_counter() - t
    print(f"driver-side steps of the same study run again ({total:.2f} s in all):")
    for label in timers.labels:
        sec, calls = timers.seconds.get(label, 0.0), timers.calls.get(label, 0)
        print(f"  {label:<50}{sec:7.2f} s  {calls} call{'s' if calls > 1 else ''}"
              + (f", {1000 * sec / calls:.0f} ms each" if calls > 1 else ""))
    per_trial_sync = timers.seconds.get("  experiment-state snapshots (save + sync)", 0.0) / n
    print(f"  (experiment-state snapshots: {per_trial_sync:.3f} s per trial)")

    import service.runner.study as S
    from service.runner.study import run_study

    original = S.TrialLoggerFactory
    S.TrialLoggerFactory = without_plots()  # the driver builds the factory from here
    try:
        t = time.perf_counter()
        run_study(make_spec("bench-noplots-c1", lrs, args, stores, 1))
        no_plots = time.perf_counter() - t
    finally:
        S.TrialLoggerFactory = original
    print(f"what-if, same study without per-trial plots: {no_plots:.2f} s, "
          f"{(no_plots - base_s) / n:.2f} s overhead per trial")

    print("a fresh Ray worker (what the first trial of each actor pays):")
    for what, sec in actor_start_cost(configs[0].model_dump()).items():
        print(f"  {what:<50}{sec:7.2f} s")
    print("in-process cost of each piece, per trial (median of 3, no Ray):")
    for what, sec in component_costs(configs[0], tmp).items():
        print(f"  {what:<50}{sec:7.3f} s")


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20, help="batches per epoch")
    ap.add_argument("--no-profile", action="store_true", help="skip the breakdown")
    ap.add_argument("--population", type=int, default=None,
                    help="measure populations of this size instead (see above)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="credit-bench-"))
    os.environ["CREDIT_HOME"] = str(tmp / "home")  # tune results, artifacts
    private_ray = None
    if not os.environ.get("RAY_ADDRESS") and not os.environ.get("CREDIT_RAY_TMP"):
        # a private cluster of our own (short path: Ray's socket names are limited)
        private_ray = f"/tmp/cb-{os.getpid()}"
        os.environ["CREDIT_RAY_TMP"] = private_ray
    torch.set_num_threads(1)  # as a trial holding one CPU
    try:
        failed = run(args, tmp) if args.population is None else populations(args, tmp)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if private_ray:
            shutil.rmtree(private_ray, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


def run(args, tmp: Path) -> bool:
    """The benchmark proper; True when the concurrency-1 overhead misses the target."""
    n = args.trials

    from service import settings
    from service.records import tracking as T
    from service.runner.ray_cluster import connect_ray
    from service.runner.study import run_study

    stores = {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
              "storage": f"sqlite:///{tmp / 'optuna.db'}"}
    lrs = lr_values(n)
    probe = make_spec("bench-probe", lrs, args, stores, 1)
    configs = [probe.trial_config({"lr": lr}) for lr in lrs]
    address = os.environ.get("RAY_ADDRESS")
    print(f"{n} trials x {args.epochs} epochs x {args.batches} batches, mnist-fc backprop on "
          f"mnist-5k, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"Ray {'at ' + address if address else 'private'}")

    base_s, base_each = baseline(configs)

    t = time.perf_counter()
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import ray.tune  # noqa: F401
    import ray.tune.search.optuna  # noqa: F401

    imports_s = time.perf_counter() - t
    t = time.perf_counter()
    connect_ray()
    ray_start_s = time.perf_counter() - t
    t = time.perf_counter()
    T.ensure_experiment(stores["tracking_uri"], probe.experiment_name,
                        settings.default_artifact_root())
    mlflow_store_s = time.perf_counter() - t

    studies = {}
    for concurrency in (1, 2):
        spec = make_spec(f"bench-c{concurrency}", lrs, args, stores, concurrency)
        wall_start = time.time()
        t = time.perf_counter()
        result = run_study(spec)
        studies[concurrency] = (time.perf_counter() - t, result, wall_start, time.time())
        if result.counts.get("complete") != n:
            raise SystemExit(f"study {spec.name}: {result.counts} ({result.message})")

    print(f"one-off (not counted): driver imports (Ray Tune, Optuna, MLflow) {imports_s:.2f} s, "
          f"Ray {'join' if address else 'start'} {ray_start_s:.2f} s, "
          f"MLflow store creation {mlflow_store_s:.2f} s")
    print(f"{'what':<28}{'seconds':>9}{'ratio':>8}{'overhead/trial':>16}  ok (≤ {TARGET_S:g} s)")
    print(f"{'baseline (Trainer, 1 proc)':<28}{base_s:>9.2f}{1.0:>8.2f}")
    failed = False
    for concurrency, (s, _, _, _) in studies.items():
        per_trial = (s - base_s) / n
        ok = per_trial <= TARGET_S
        failed |= concurrency == 1 and not ok
        print(f"{f'study, concurrency {concurrency}':<28}{s:>9.2f}{s / base_s:>8.2f}"
              f"{per_trial:>16.2f}  {'yes' if ok else 'NO'}")
    print(f"baseline per trial: first {base_each[0]:.2f} s, median of the rest "
          f"{statistics.median(base_each[1:] or base_each):.2f} s")

    if not args.no_profile:
        profile(args, lrs, stores, configs, tmp, studies[1], base_s)
    return failed


POPULATION_TARGET = 0.4


def populations(args, tmp: Path) -> bool:
    """One configuration per Ray trial against ``--population K``; True on a miss."""
    from service.runner.ray_cluster import connect_ray
    from service.runner.study import run_study
    from service.spec import StudySpec

    trials = args.trials if args.trials != 8 else 24  # the case by default
    print(f"random search, mnist-fc-node-perturbation, {trials} trials x {args.epochs} "
          f"epochs of mnist-5k (full), 2 Ray trials at once, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}")
    connect_ray()
    walls, results = {}, {}
    runs = [(k, "") for k in (1, args.population)]
    if not args.no_profile:  # what-if: the same without the per-trial plots
        runs += [(k, "-noplots") for k in (1, args.population)]
    for k, what in runs:
        if what:
            import service.runner.study as S

            S.TrialLoggerFactory = without_plots()
        spec = StudySpec(name=f"bench-pop{k}{what}", space="mnist-fc-node-perturbation",
                         sampler="random", seed=0, max_trials=trials, parallel_trials=2,
                         population=k, epochs=args.epochs, dataset="mnist-5k",
                         tracking_uri=f"sqlite:///{tmp / f'mlflow{k}{what}.db'}",
                         storage=f"sqlite:///{tmp / f'optuna{k}{what}.db'}")
        t = time.perf_counter()
        results[k, what] = run_study(spec)
        walls[k, what] = time.perf_counter() - t
        r = results[k, what]
        print(f"population {k:>4}{what:<9}: {walls[k, what]:8.2f} s  {r.counts}  best "
              f"{r.best_value:.4f} at {r.best_params}")
    if not args.no_profile:
        print(f"what-if without per-trial plots: ratio "
              f"{walls[args.population, '-noplots'] / walls[1, '-noplots']:.2f}")
    results = {k: r for (k, what), r in results.items() if not what}
    walls = {k: w for (k, what), w in walls.items() if not what}
    ratio = walls[args.population] / walls[1]
    same = results[1].best_params == results[args.population].best_params
    print(f"wall ratio population {args.population} / population 1: {ratio:.2f} "
          f"(target ≤ {POPULATION_TARGET}); same best configuration: {same}")
    return ratio > POPULATION_TARGET or not same


if __name__ == "__main__":
    main()
