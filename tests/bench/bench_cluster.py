"""A study on the namespace cluster (head host + worker host, Tune's storage on an S3
server (SeaweedFS), MLflow server and Optuna on PostgreSQL) against the same study on
the head host alone (private local Ray, sqlite stores, local storage), side by side in
one run.

    python -m tests.bench.bench_cluster [--trials 16] [--epochs 2] [--batches 50]

Needs root (namespaces), like tests/service/test_cluster.py. Both studies run
mnist-fc backprop on mnist-5k with the same seed and sampler. Prints each wall time,
each trial's mean duration (from its MLflow run: start to end), and the difference per
trial — the overhead of checkpointing to S3 and logging to the remote
MLflow server. On one machine both hosts share its cores: the cluster cannot be
faster here; only the overhead is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tests.service.hosts import Cluster, unavailable


def _durations(tracking_uri: str, study: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name("credit-search")
    runs = c.search_runs([exp.experiment_id], f"tags.`credit.study` = '{study}' and "
                         "tags.`credit.role` = 'trial'", max_results=1000)
    return [(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time]


def _search(args, name: str, concurrency: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", "search", "--space", "mnist-fc-backprop",
            "--name", name, "--trials", str(args.trials), "--concurrency", str(concurrency),
            "--epochs", str(args.epochs), "--batches-per-epoch", str(args.batches),
            "--dataset", "mnist-5k", "--quiet", *extra]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args()
    why = unavailable()
    if why:
        print(f"bench_cluster: {why}", file=sys.stderr)
        return 2
    cluster = Cluster()
    try:
        cluster.make_hosts()
        cluster.start_postgres()
        cluster.start_s3()
        cluster.start_mlflow()
        cluster.start_ray(worker_cpus=2, head_cpus=2)
        env = cluster.env(RAY_ADDRESS=f"{cluster.head_ip}:{cluster.ray_port}",
                          CREDIT_RAY_NODE_IP=cluster.head_ip,
                          CREDIT_STORAGE=cluster.s3_storage,
                          CREDIT_S3_ENDPOINT=cluster.s3_endpoint)
        start = time.perf_counter()
        r = subprocess.run(cluster.on("head", _search(
            args, "bench-cluster", 4, "--tracking-uri", cluster.mlflow_url,
            "--storage", cluster.pg_url("optuna"))), env=env, capture_output=True, text=True)
        both = time.perf_counter() - start
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
            return 1
        on_cluster = _durations(cluster.mlflow_url, "bench-cluster")
        with tempfile.TemporaryDirectory(prefix="credit-bench-") as home:
            alone_env = {k: v for k, v in cluster.env().items() if not k.startswith("RAY_")}
            alone_env.update(CREDIT_HOME=home, CREDIT_RAY_TMP=f"{home}/ray")
            start = time.perf_counter()
            r = subprocess.run(cluster.on("head", _search(args, "bench-alone", 2)),
                               env=alone_env, capture_output=True, text=True)
            alone = time.perf_counter() - start
            if r.returncode != 0:
                print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
                return 1
            on_head = _durations(f"sqlite:///{home}/mlflow.db", "bench-alone")
    finally:
        cluster.close()
    t_cluster, t_head = statistics.mean(on_cluster), statistics.mean(on_head)
    print(f"{args.trials} trials x {args.epochs} epochs x {args.batches} batches, mnist-5k "
          f"({os.cpu_count()} cores on this machine)")
    print(f"  head + worker (4 at once, S3 storage, MLflow server, PostgreSQL):     "
          f"{both:7.1f} s wall, {t_cluster:5.2f} s per trial")
    print(f"  head alone    (2 at once, local storage, sqlite MLflow and Optuna):   "
          f"{alone:7.1f} s wall, {t_head:5.2f} s per trial")
    print(f"  per-trial overhead of S3 storage + remote MLflow: {t_cluster - t_head:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
