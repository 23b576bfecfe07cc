"""Latency of the ``credit`` commands that should answer at once, against ``python -c pass``.

    python -m tests.bench.bench_cli [--repeat 5]

Runs each command ``--repeat`` times in a fresh interpreter (as a user's shell does)
and prints the median wall time, the median of ``python -c pass`` measured in the same
run (the interpreter's own start-up), and their difference: the time our imports and
work add. The target (issue #11) is under 1 s for ``--help``, the listings and every
argument error on a 2-core machine. Nothing here asserts: it measures.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

#: (label, argv after ``credit``, expected exit status)
COMMANDS: tuple[tuple[str, list[str], int], ...] = (
    ("--help", ["--help"], 0),
    ("rules", ["rules"], 0),
    ("experiments", ["experiments"], 0),
    ("datasets", ["datasets"], 0),
    ("spaces", ["spaces"], 0),
    ("spaces show", ["spaces", "show", "mnist-fc-node-perturbation"], 0),
    ("train --epochs x", ["train", "--epochs", "x"], 2),
    ("train --rule bogus", ["train", "--rule", "bogus"], 2),
    ("train --noise-std -1", ["train", "--noise-std", "-1"], 2),
    ("search --space bogus", ["search", "--space", "bogus"], 2),
    ("search --trials 0", ["search", "--space", "mnist-fc-node-perturbation", "--trials", "0"], 2),
    ("studies submit (no server)", ["studies", "submit", "--space", "bogus",
                                    "--url", "http://127.0.0.1:9"], 1),
    ("studies list --bogus", ["studies", "list", "--bogus"], 2),
    ("paper bogus", ["paper", "bogus"], 2),
    ("report (no id)", ["report"], 2),
)


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Wall time, exit status, and CPU time (user + system: what a busy machine's
    neighbours do not inflate)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, done.returncode, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    home = tempfile.mkdtemp(prefix="credit-bench-cli-")
    env = {**os.environ, "CREDIT_HOME": home}
    env.pop("CREDIT_URL", None)
    runs = [_time([sys.executable, "-c", "pass"], env) for _ in range(opts.repeat)]
    base = statistics.median(r[0] for r in runs)
    base_cpu = statistics.median(r[2] for r in runs)
    print(f"baseline python -c pass: {base * 1000:.0f} ms wall, {base_cpu * 1000:.0f} ms CPU "
          f"(median of {opts.repeat}); load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<32} {'wall':>7} {'+ base':>7} {'CPU':>7} {'x base':>7}  exit")
    for label, args, expected in COMMANDS:
        runs = [_time([sys.executable, "-m", "service.cli", *args], env)
                for _ in range(opts.repeat)]
        median = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        codes = {r[1] for r in runs}
        flag = "" if codes == {expected} else f"  (expected {expected})"
        print(f"{label:<32} {median * 1000:>5.0f}ms {(median - base) * 1000:>5.0f}ms "
              f"{cpu * 1000:>5.0f}ms {cpu / base_cpu:>6.1f}x  "
              f"{','.join(map(str, sorted(codes)))}{flag}")


if __name__ == "__main__":
    main()
