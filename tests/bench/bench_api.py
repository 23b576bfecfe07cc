"""Latency of ``GET /studies/{id}`` and ``GET /studies`` while a study runs, under N
concurrent clients, beside ``GET /healthz`` (the floor of the stack) in the same run.

    python -m tests.bench.bench_api [--clients 1,8,32] [--duration 10]

Starts the whole local stack (``credit serve --local``: a private Ray head, an
MLflow server and the API, on loopback, in a temporary CREDIT_HOME), submits a study
that keeps the cluster busy, and once it runs, N clients (asyncio + httpx, one
connection each) request ``GET /studies/{id}`` back to back for ``--duration``
seconds per N — and the same for ``GET /studies`` and ``GET /healthz``. Prints p50 /
p95 / p99 latency and throughput per route and N, and the ratios of the p95 of
``GET /studies/{id}`` and of ``GET /studies`` to that of ``/healthz`` (target: at most
2), then stops the stack. ``/healthz`` is asked with the token (its full answer).
Everything shares this machine's cores: the load generator, the API, the
study's driver and its trials.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.local.stack import free_port


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _client(url: str, headers: dict, until: float, latencies: list[float],
                  errors: list[int]) -> None:
    async with httpx.AsyncClient(headers=headers, timeout=30) as c:
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                r = await c.get(url)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors.append(1)


async def load(url: str, headers: dict, clients: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: list[int] = []
    until = time.perf_counter() + duration
    start = time.perf_counter()
    await asyncio.gather(*[_client(url, headers, until, latencies, errors)
                           for _ in range(clients)])
    elapsed = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p95_ms": 1000 * _quantile(latencies, 0.95) if latencies else float("nan"),
            "p99_ms": 1000 * _quantile(latencies, 0.99) if latencies else float("nan"),
            "rps": len(latencies) / elapsed}


def _start_stack(home: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    env["CREDIT_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--local", "--port", str(port),
         "--mlflow-port", str(free_port()), "--dashboard-port", str(free_port()),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(home / "serve.log", "w"),  # noqa: SIM115
        start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per client count")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="credit-bench-") as tmp:
        home = Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        stack = _start_stack(home, port)
        try:
            t0 = time.perf_counter()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/healthz", timeout=2).json()["status"] == "ok":
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if stack.poll() is not None:
                    print((home / "serve.log").read_text()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(1)
            print(f"stack up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            headers = {"Authorization": f"Bearer {(home / 'api_token').read_text().strip()}"}
            study = httpx.post(base + "/studies", headers=headers, timeout=60, json={
                "name": "bench", "space": "mnist-fc-node-perturbation", "max_trials": 200,
                "parallel_trials": 2, "epochs": 20, "dataset": "mnist-5k"}).json()
            url = f"{base}/studies/{study['id']}"
            while httpx.get(url, headers=headers).json()["status"] != "RUNNING":
                time.sleep(0.5)
            time.sleep(10)  # trials started: the cluster is busy
            routes = {"/healthz": base + "/healthz", "/studies/{id}": url,
                      "/studies": base + "/studies"}
            rows = [(route, asyncio.run(load(target, headers, n, args.duration)))
                    for n in counts for route, target in routes.items()]
            final = httpx.get(url, headers=headers).json()
            c = final["counts"]
            print(f"\nwhile study 'bench' runs ({c['running']} trials running, "
                  f"{c['complete']} complete); {args.duration:g} s per row; "
                  f"{os.cpu_count()} CPUs shared by clients, API, driver and trials")
            print(f"{'route':>14} {'clients':>8} {'requests':>9} {'errors':>7} {'p50 ms':>8} "
                  f"{'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}")
            for route, r in rows:
                print(f"{route:>14} {r['clients']:>8} {r['requests']:>9} {r['errors']:>7} "
                      f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                      f"{r['rps']:>8.0f}")
            p95 = {(route, r["clients"]): r["p95_ms"] for route, r in rows}
            for n in counts:
                for route in ("/studies/{id}", "/studies"):
                    ratio = p95[(route, n)] / p95[("/healthz", n)]
                    print(f"{n:>3} clients: p95 {route} / p95 /healthz = {ratio:.2f} "
                          f"({'ok' if ratio <= 2 else 'over the target of 2'})")
            httpx.post(f"{url}/cancel", headers=headers, timeout=120)
        finally:
            stack.send_signal(signal.SIGTERM)
            try:
                stack.wait(timeout=180)
            except subprocess.TimeoutExpired:
                stack.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
