"""Finding and stopping the test clusters' processes by what their command lines name
(shared by the test session's Ray cluster and the namespace cluster of ``hosts.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from service.local.stack import alive, stop_processes

#: Epochs (of 150 batches, some 0.25 s each warm) of a trial a test kills after its first
#: epoch: enough that it still trains when the killer, which polls, lands. A warm trial
#: checkpoints its first and last epochs only (``trainables.tune.CheckpointPace``), and
#: 6 such epochs had ended before the kill.
KILLED_TRIAL_EPOCHS = 30


def processes() -> Iterator[tuple[int, str]]:
    """``(pid, command line)`` of every process of the machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            yield int(entry.name), cmd


def uptime() -> float:
    """Seconds since this machine booted (the clock of ``started_at``)."""
    return float(Path("/proc/uptime").read_text().split()[0])


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since boot; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")


def holds_open(pid: int, prefix: str) -> bool:
    """Whether process ``pid`` has a file under ``prefix`` open (its logs, say)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def stop_cluster(temp_dir: Path) -> None:
    """Stop the Ray processes of ONE cluster: those whose command line names its temp dir
    or that hold one of its files open — Ray's agents and client server rename
    themselves or name only addresses, but write their logs there.

    Never ``ray stop``: it kills every Ray process of the machine, other users' clusters
    (and a study running beside the tests) included.
    """
    prefix = str(temp_dir)

    def mine() -> list[int]:
        return [pid for pid, cmd in processes()
                if pid != os.getpid() and alive(pid)
                and (prefix in cmd or holds_open(pid, prefix + "/"))]
    stop_processes(mine, grace_s=10.0)


def an_epoch_logged(tracking_uri: str) -> bool:
    """Whether a trial run of the store's ``credit-search`` experiment has logged an epoch
    (False while the store is being created)."""
    from mlflow.tracking import MlflowClient

    from service.records import tags

    client = MlflowClient(tracking_uri)
    try:
        exp = client.get_experiment_by_name("credit-search")
        runs = client.search_runs([exp.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")
    except Exception:  # the store is being created
        return False
    return any(r.data.metrics.get("epoch", 0) >= 1 for r in runs)
