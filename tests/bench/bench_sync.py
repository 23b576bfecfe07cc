"""The API's sync of one running study, and ``GET /studies/{id}`` and ``/trials`` (first
page), at 1,000 / 10,000 / 50,000 trials: the sync's cost when 10 trials changed since
the last one, before (every trial read from Optuna and every child run searched in
MLflow, each time) and after (only the trials that changed: ``service.api.trial_sync``).

    python -m tests.bench.bench_sync [--sizes 1000,10000,50000] [--rounds 3]
                                     [--before-rounds 1] [--requests 60]

Real stores in a temporary home: the service database, Optuna and MLflow, all sqlite.
Each study is made in seconds (``tests.service.api.bulk_trials``: Optuna's and MLflow's
own tables written in one transaction each; the last 10 trials RUNNING). Then, per
size, ``--rounds`` times: 5 RUNNING trials complete and 5 new ones start with their
MLflow runs (through Optuna's and MLflow's APIs), and one sync of the study is timed
(``sync.sync_study``: Ray is a stand-in that reports the job RUNNING). "before" is the
code the sync ran until this change — ``service/api/queries.py`` of ``BASELINE``, loaded
from git — timed on the same stores in the same run: its ``read_records`` and the row
write it was followed by. The latencies are over real uvicorn HTTP on loopback, one
client, with the app's own sync running every 2 s. Prints a table; the target is a
sync whose cost is flat in the number of trials (per changed trial, not per trial).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import httpx
import uvicorn

from service.api import ApiSettings, create_app, queries, sync, trial_sync
from service.records import db
from tests.service.api.bulk_trials import advance, make_study
from tests.service.api.helpers import TOKEN, free_port
from tests.service.api.test_restarts import RunningRay

REPO = Path(__file__).resolve().parents[2]
#: The commit whose sync read every trial (the last before the incremental sync).
BASELINE = "87262b9"


def _old_queries() -> types.ModuleType | None:
    """``service.api.queries`` as it was at ``BASELINE`` (None if git cannot show it)."""
    try:
        source = subprocess.run(["git", "show", f"{BASELINE}:service/api/queries.py"],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("baseline_queries")
    exec(compile(source, f"{BASELINE}:service/api/queries.py", "exec"), module.__dict__)
    return module


def _old_sync(svc, old, name: str) -> float:
    """One sync of a RUNNING study as ``BASELINE`` did it: every trial read, the row
    written (counts, best, the whole trials list)."""
    record = queries.get_study(svc, name)
    start = time.perf_counter()
    fields = old.read_records(svc, record)
    with svc.db.session() as session:
        db.update_active(session, record.id, **fields)
    took = time.perf_counter() - start
    with svc.db.session() as session:  # the list is not kept in the row any more
        db.set_fields(session, record.id, trials=None)
    return took


def _new_sync(svc, name: str) -> tuple[float, trial_sync.SyncStats]:
    record = queries.get_study(svc, name)
    start = time.perf_counter()
    sync.sync_study(svc, record)
    return time.perf_counter() - start, trial_sync.LAST_STATS[record.id]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latency(c: httpx.Client, path: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = c.get(path)
        times.append(time.perf_counter() - start)
        assert r.status_code == 200, r.text[:300]
    return _quantile(times, 0.5) * 1000, _quantile(times, 0.95) * 1000


def _serve(settings: ApiSettings):
    app = create_app(settings)
    app.state.services.jobs = RunningRay()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the API did not start"
        time.sleep(0.1)
    return server, thread, f"http://127.0.0.1:{server.config.port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,50000", help="trials per study")
    p.add_argument("--rounds", type=int, default=3, help="timed syncs after, per size (3)")
    p.add_argument("--before-rounds", type=int, default=1,
                   help="timed syncs before, per size (1; 0: none)")
    p.add_argument("--requests", type=int, default=60, help="requests per route and size")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    old = _old_queries() if args.before_rounds else None
    home = Path(tempfile.mkdtemp(prefix="credit-bench-sync-"))
    settings = ApiSettings(home=home, api_tokens=TOKEN, sync_interval_s=60,
                           mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                           max_trials_per_study=1000)
    svc = create_app(settings).state.services  # the stores, prepared; no server yet
    svc.jobs = RunningRay()
    svc.prepare()
    rows = []
    for n in sizes:
        name = f"bench-{n}"
        start = time.perf_counter()
        made = make_study(svc, name, n, running=10)
        built = time.perf_counter() - start
        first, first_stats = _new_sync(svc, name)
        after, stats = [], []
        for _ in range(args.rounds):
            advance(svc, made, finish=5, start=5)
            took, st = _new_sync(svc, name)
            after.append(took)
            stats.append(st)
        before = []
        for _ in range(args.before_rounds if old is not None else 0):
            advance(svc, made, finish=5, start=5)
            before.append(_old_sync(svc, old, name))
        _new_sync(svc, name)  # the row up to date again for the reads
        rows.append({"n": n, "built": built, "first": first, "first_stats": first_stats,
                     "after": statistics.median(after), "stats": stats[-1],
                     "before": statistics.median(before) if before else None})
        was = "-" if not before else f"{statistics.median(before):.2f} s"
        print(f"{n} trials: built in {built:.1f} s, first sync {first:.2f} s, after "
              f"{rows[-1]['after'] * 1000:.0f} ms ({stats[-1]}), before {was}", flush=True)
    settings.sync_interval_s = 2.0
    server, thread, url = _serve(settings)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=300) as c:
            for row in rows:
                name = f"bench-{row['n']}"
                _latency(c, f"/studies/{name}", 3)  # warm
                row["study"] = _latency(c, f"/studies/{name}", args.requests)
                row["trials"] = _latency(c, f"/studies/{name}/trials", max(5, args.requests // 3))
                start = time.perf_counter()
                r = c.get(f"/studies/{name}/export", params={"format": "csv"})
                row["export"] = time.perf_counter() - start
                trials = row["n"] + 5 * (args.rounds + (args.before_rounds if old else 0))
                assert r.status_code == 200 and len(r.text.splitlines()) == trials + 1
    finally:
        server.should_exit = True
        thread.join(30)
    _print(rows, args)
    return 0


def _print(rows: list[dict], args: argparse.Namespace) -> None:
    print()
    print(f"one sync of a RUNNING study, {5} trials finished + {5} started since the last "
          f"(median of {args.rounds} after, {args.before_rounds} before); latencies over "
          f"HTTP, 1 client, p50/p95")
    head = ("trials", "sync before", "sync after", "ratio", "read/written", "first sync",
            "GET /studies/{id}", "GET /trials (1000)", "export csv")
    print(" | ".join(head))
    for r in rows:
        st = r["stats"]
        before = "-" if r["before"] is None else f"{r['before'] * 1000:.0f} ms"
        ratio = "-" if r["before"] is None else f"{r['before'] / r['after']:.0f}x"
        print(" | ".join((
            f"{r['n']:,}", before, f"{r['after'] * 1000:.0f} ms", ratio,
            f"{st.optuna_trials_read}+{st.mlflow_runs_read} runs/{st.rows_written}",
            f"{r['first']:.1f} s",
            f"{r['study'][0]:.1f}/{r['study'][1]:.1f} ms",
            f"{r['trials'][0]:.0f}/{r['trials'][1]:.0f} ms", f"{r['export']:.2f} s")))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
