"""Many small studies at once against the same trials as one study, over HTTP.

    python -m tests.bench.bench_studies [--studies 12] [--trials 2] [--epochs 2]
        [--max-concurrent 4] [--cpus 2]

A real ``credit serve --local`` (Ray head, MLflow server, Optuna dashboard, the API) in a
temporary ``CREDIT_HOME``. After one small warm-up study (the server's first MLflow
experiment and Optuna schema, Ray's first job), two arms on the same server:

- ``many``: N studies of T trials each (node perturbation's preset space on mnist-5k,
  random sampler, E full epochs, 2 trials at once per study), all submitted at once; the
  server runs ``--max-concurrent`` of them, the rest wait in its fair queue;
- ``one``: one study of N·T trials, the same settings.

It prints both walls and their ratio (issue "scale": target ≤ 2.0 for 12 studies of 2
trials × 2 epochs), each study's time from submission and from its start (leaving the
queue: ``started_at``) to its first epoch (the first ``epoch`` metric of its trial runs in
MLflow; target ≤ 3 s from the start on a warm server), and the peak resident memory of
the stack's processes (every process carrying the stack's ``CREDIT_STACK_ID``), of a study
driver and of a trial process, sampled every 0.25 s."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from service.local.stack import free_port

TOKEN = "bench-studies-token-0123456789"
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kind(cmd: str) -> str:
    """What a process of the stack is, by its command line."""
    if "service.runner.job" in cmd or "service.runner.launch" in cmd:
        return "driver (cold) / entrypoint"
    if cmd.startswith("ray::JobSupervisor"):
        return "Ray job supervisor"
    if cmd.startswith(("ray::ImplicitFunc", "ray::_Inner", "ray::train")):
        return "trial actor (relay)"
    if "service.runner.warm" in cmd:  # a warm process or one of its forks
        return "warm trainer + forks" if cmd.rstrip().endswith("trainer") \
            else "warm driver + forks"
    if "service.cli" in cmd or "uvicorn" in cmd and "mlflow" not in cmd:
        return "API (credit serve)"
    if "mlflow" in cmd:
        return "MLflow server"
    if "optuna-dashboard" in cmd:
        return "Optuna dashboard"
    return "Ray (daemons, idle workers)"


RAY = "Ray (daemons, idle workers)"


def _machine() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / tick, sum(values) / tick


def _pss_mb(pid: int) -> float:
    """Proportional set size: a page shared by n processes counts 1/n in each (a warm
    driver's forks share its imports)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return -1.0


class MemorySampler(threading.Thread):
    """Every 0.25 s: the summed RSS of the stack's processes (those whose environment
    carries ``CREDIT_STACK_ID=<id>``), and the largest driver and trial process; and the
    CPU seconds each process used, by kind (``cpu_by_kind``: as of its last sample)."""

    def __init__(self, stack_id: str):
        super().__init__(daemon=True)
        self.mark = f"CREDIT_STACK_ID={stack_id}".encode()
        self.stop = threading.Event()
        self.peak_total = self.peak_driver = self.peak_trial = self.peak_supervisor = 0.0
        self.peak_pss_total = self.peak_driver_pss = self.peak_drivers_pss = 0.0
        self.peak_warm_pss = self.peak_fork = self.peak_fork_pss = 0.0
        self.peak_trainer_pss = 0.0
        self.trial_rss: dict[int, float] = {}  # each Tune trial actor's peak
        self.peak_drivers = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self.lock = threading.Lock()

    def cpu_by_kind(self) -> dict[str, float]:
        with self.lock:
            out: dict[str, float] = {}
            for kind, seconds in self.cpu.values():
                out[kind] = out.get(kind, 0.0) + seconds
            return out

    def _ours(self) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if self.mark in (entry / "environ").read_bytes():
                        out.append(int(entry.name))
                except OSError:
                    continue
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            pids = self._ours()
            total = pss_total = drivers_pss = 0.0
            drivers = 0
            warm = {pid for pid in pids if "service.runner.warm" in _cmdline(pid)
                    and not _cmdline(pid).rstrip().endswith("trainer")}
            trainers = {pid for pid in pids if "service.runner.warm" in _cmdline(pid)
                        and pid not in warm}
            for pid in pids:
                rss, pss = _rss_mb(pid), _pss_mb(pid)
                total += rss
                pss_total += pss
                cmd = _cmdline(pid)
                seconds = _cpu_s(pid)
                if seconds >= 0:
                    with self.lock:  # a trial's process is IDLE before and after it
                        kind = self.cpu.get(pid, (RAY, 0.0))[0]
                        self.cpu[pid] = (_kind(cmd) if kind == RAY else kind, seconds)
                if pid in warm and _ppid(pid) not in warm:  # the warm driver itself
                    self.peak_warm_pss = max(self.peak_warm_pss, pss)
                    drivers_pss += pss
                elif pid in warm or ("service.runner.job" in cmd
                                     and not cmd.startswith("/bin/sh")):
                    drivers += 1
                    drivers_pss += pss
                    self.peak_driver = max(self.peak_driver, rss)
                    self.peak_driver_pss = max(self.peak_driver_pss, pss)
                elif cmd.startswith(("ray::ImplicitFunc", "ray::_Inner", "ray::train")):
                    self.peak_trial = max(self.peak_trial, rss)
                    self.trial_rss[pid] = max(self.trial_rss.get(pid, 0.0), rss)
                elif pid in trainers and _ppid(pid) in trainers:  # a trial's fork
                    self.peak_fork = max(self.peak_fork, rss)
                    self.peak_fork_pss = max(self.peak_fork_pss, pss)
                elif pid in trainers:
                    self.peak_trainer_pss = max(self.peak_trainer_pss, pss)
                elif cmd.startswith("ray::JobSupervisor"):
                    self.peak_supervisor = max(self.peak_supervisor, rss)
            self.peak_total = max(self.peak_total, total)
            self.peak_pss_total = max(self.peak_pss_total, pss_total)
            self.peak_drivers_pss = max(self.peak_drivers_pss, drivers_pss)
            self.peak_drivers = max(self.peak_drivers, drivers)
            time.sleep(0.25)


def _start_stack(home: Path, args) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    env.update(CREDIT_HOME=str(home), CREDIT_API_TOKENS=TOKEN, CREDIT_SYNC_INTERVAL_S="1",
               CREDIT_MAX_CONCURRENT_STUDIES=str(args.max_concurrent),
               CREDIT_WARM_DRIVERS="0" if args.cold else "1",
               CREDIT_WARM_DIR=str(home / "warm"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--local", "--port", str(port),
         "--cpus", str(args.cpus), "--mlflow-port", str(free_port()),
         "--optuna-port", str(free_port()), "--dashboard-port", str(free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=open(home / "serve.err", "wb"),  # noqa: SIM115
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home / "serve.err").read_text()[-3000:]
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("credit serve --local did not get ready")


def _body(name: str, trials: int, args) -> dict:
    return {"name": name, "space": "mnist-fc-node-perturbation", "sampler": "random",
            "seed": 0, "max_trials": trials, "parallel_trials": 2, "epochs": args.epochs,
            "dataset": "mnist-5k"}


def _wait_all(client: httpx.Client, ids: list[str], timeout_s: float = 3600) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        studies = [client.get(f"/studies/{i}").json() for i in ids]
        if all(s["status"] in ENDED for s in studies):
            return studies
        time.sleep(0.5)
    raise RuntimeError("studies did not end in time")


def _first_epoch(mlflow_url: str, client: httpx.Client, study: dict) -> float | None:
    """When the study's first epoch was logged (epoch seconds), from its trial runs."""
    from mlflow.tracking import MlflowClient

    runs = [t.get("mlflow_run_id") for t in
            client.get(f"/studies/{study['id']}/trials").json()["data"]]
    ml = MlflowClient(mlflow_url)
    times = [m.timestamp / 1000 for r in runs if r
             for m in ml.get_metric_history(r, "epoch") if m.step == 1]
    return min(times) if times else None


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_arm(client: httpx.Client, mlflow_url: str, names: list[str], trials: int,
            args, sampler: MemorySampler) -> dict:
    submitted: dict[str, float] = {}

    def submit(name: str) -> str:
        submitted[name] = time.time()
        r = client.post("/studies", json=_body(name, trials, args))
        assert r.status_code == 201, r.text
        return r.json()["id"]

    cpu_before, machine_before = sampler.cpu_by_kind(), _machine()
    start = time.perf_counter()
    with ThreadPoolExecutor(len(names)) as pool:
        ids = list(pool.map(submit, names))
    studies = _wait_all(client, ids)
    wall = time.perf_counter() - start
    time.sleep(0.5)  # the sampler's last look at the ended processes
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in sampler.cpu_by_kind().items()}
    machine = [b - a for a, b in zip(machine_before, _machine(), strict=True)]
    assert all(s["status"] == "SUCCEEDED" for s in studies), \
        [(s["name"], s["status"], s["message"]) for s in studies]
    rows = []
    for s in studies:
        first = _first_epoch(mlflow_url, client, s)
        started = _ts(s["started_at"]) if s.get("started_at") else None
        rows.append({"name": s["name"], "from_submit": first - submitted[s["name"]]
                     if first else None,
                     "from_start": first - started if first and started else None,
                     "waited": started - submitted[s["name"]] if started else None})
    return {"wall": wall, "studies": rows, "cpu": cpu, "busy": machine[0] / machine[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=12)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-concurrent", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--cold", action="store_true",
                    help="every driver starts cold (CREDIT_WARM_DRIVERS=0): the baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="credit-bench-studies-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        proc, url = _start_stack(home, args)
        try:
            record = json.loads((home / "server.json").read_text())
            stack_id = json.loads((home / "stack.json").read_text())["stack_id"]
            sampler = MemorySampler(stack_id)
            sampler.start()
            with httpx.Client(base_url=url, timeout=120,
                              headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                warm = run_arm(client, record["mlflow_ui"], ["warm-up"], 1, args, sampler)
                print(f"warm-up study (1 trial): {warm['wall']:.1f} s", flush=True)
                many = run_arm(client, record["mlflow_ui"],
                               [f"small-{i:02d}" for i in range(args.studies)],
                               args.trials, args, sampler)
                one = run_arm(client, record["mlflow_ui"], ["one-big"],
                              args.studies * args.trials, args, sampler)
            sampler.stop.set()
            sampler.join()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
    n, t = args.studies, args.trials
    print(f"\n{n} studies of {t} trials x {args.epochs} epochs, at most "
          f"{args.max_concurrent} running at once: {many['wall']:.1f} s")
    print(f"1 study of {n * t} trials, same settings: {one['wall']:.1f} s")
    print(f"ratio: {many['wall'] / one['wall']:.2f}x (target <= 2.0)")
    kinds = sorted(set(many["cpu"]) | set(one["cpu"]),
                   key=lambda k: -many["cpu"].get(k, 0.0))
    print(f"\n{'CPU seconds by process kind':<30} {'many':>6}  {'one':>6}")
    for k in kinds:
        print(f"  {k:<28} {many['cpu'].get(k, 0.0):6.1f}  {one['cpu'].get(k, 0.0):6.1f}")
    print(f"  {'all':<28} {sum(many['cpu'].values()):6.1f}  {sum(one['cpu'].values()):6.1f}")
    print(f"  {'machine busy':<28} {many['busy']:6.0%}  {one['busy']:6.0%}")
    print("\nstudy      waited in queue  submit->first epoch  start->first epoch")
    for row in many["studies"] + one["studies"]:
        def f(v):
            return "-" if v is None else f"{v:.1f} s"
        print(f"{row['name']:<10} {f(row['waited']):>15}  {f(row['from_submit']):>19}  "
              f"{f(row['from_start']):>18}")
    starts = [r["from_start"] for r in many["studies"] if r["from_start"] is not None]
    if starts:
        print(f"start->first epoch, {n} small studies: median {statistics.median(starts):.1f} s,"
              f" max {max(starts):.1f} s (target <= 3 s)")
    print(f"\npeak RSS: stack {sampler.peak_total / 1024:.2f} GB, a study driver "
          f"{sampler.peak_driver:.0f} MB (+ its Ray job supervisor "
          f"{sampler.peak_supervisor:.0f} MB), a trial process {sampler.peak_trial:.0f} MB, "
          f"driver processes at once {sampler.peak_drivers}")
    print(f"peak PSS (shared pages split between their processes): stack "
          f"{sampler.peak_pss_total / 1024:.2f} GB, a study driver "
          f"{sampler.peak_driver_pss:.0f} MB, the warm driver {sampler.peak_warm_pss:.0f} MB, "
          f"all drivers at once {sampler.peak_drivers_pss:.0f} MB")
    actors = list(sampler.trial_rss.values()) or [0.0]
    print(f"a trial's fork of the warm trainer: RSS {sampler.peak_fork:.0f} MB, PSS "
          f"{sampler.peak_fork_pss:.0f} MB; the warm trainer PSS "
          f"{sampler.peak_trainer_pss:.0f} MB; a trial's Tune actor (its relay, or the "
          f"trial itself when cold) RSS: median {statistics.median(actors):.0f} MB of "
          f"{len(actors)}, largest {sampler.peak_trial:.0f} MB")


if __name__ == "__main__":
    main()
