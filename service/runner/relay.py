"""Tune's trainables as a study's driver names them: a relay to this node's warm trainer.

Tune runs each trial in a Ray actor of the study's job, and a job's worker processes
are its own: each trial's process would import torch, the trainables and MLflow again
(seconds of CPU a trial). Instead, these functions hand the trial to the node's warm
trainer (``service.runner.warm``, role ``trainer``: those imports done once per node),
whose fork trains it (``service.runner.warm_trainer``), and report for it: each
epoch's metrics and checkpoint go to ``ray.tune.report`` here, in Tune's process. The
fork dies with this actor (Tune stopped the trial, the study was cancelled, the node
died). A trial with GPUs trains here, in the actor itself, as does any trial while its
node has no warm trainer yet (one is started for the next).

The trainables' arguments come packed (``pack``): this process forwards them without
unpickling them, so it never imports what they need (MLflow for the trial logger).
"""

from __future__ import annotations

import pickle
import pkgutil
import socket
from contextlib import nullcontext
from typing import Any

import ray
from ray import tune

from service.runner import launch

__all__ = ["TrialProcessError", "pack", "train_population", "train_trial"]


class TrialProcessError(RuntimeError):
    """The process that trained a trial died without saying why (killed: the machine's
    memory, a crash of native code): an infrastructure failure, retried by Tune."""


def pack(**kwargs: Any) -> bytes:
    return pickle.dumps(kwargs)


def train_trial(config: dict[str, Any], packed: bytes) -> None:
    """``trainables.tune.train_trial`` for Tune, in this node's warm trainer."""
    _relay("trainables.tune:train_trial", config, packed)


def train_population(config: dict[str, Any], packed: bytes) -> None:
    """``trainables.tune.train_population`` for Tune, in this node's warm trainer."""
    _relay("trainables.tune:train_population", config, packed)


def _relay(target: str, config: dict[str, Any], packed: bytes) -> None:
    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    path = None if resources.get("GPU", 0) else launch.socket_path(role="trainer")
    if path is not None:
        checkpoint = tune.get_checkpoint()
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as directory:
            trial = {"target": target, "config": config, "kwargs": packed,
                     "trial_id": context.get_trial_id(), "cpus": resources.get("CPU", 1),
                     "checkpoint": directory,
                     "node_id": ray.get_runtime_context().get_node_id(),
                     "node_ip": ray.util.get_node_ip_address()}
            if _in_fork(path, trial):
                return
        launch.start_warm(path, role="trainer")
    pkgutil.resolve_name(target)(config, **pickle.loads(packed))


def _in_fork(path, trial: dict[str, Any]) -> bool:
    """Train ``trial`` in a fork of the warm trainer at ``path``, reporting for it; False
    if no warm trainer answers there."""
    mine, theirs = socket.socketpair()
    opened = launch.open_warm(path, [], [0, 1, 2, theirs.fileno()], pickle.dumps(trial))
    theirs.close()
    if opened is None:
        mine.close()
        return False
    sock, lines, pid = opened
    try:  # closing ``sock`` (however this ends) kills the fork if it still runs
        while (message := launch.recv_frame(mine)) is not None:
            if "report" in message:
                tune.report(message["report"], checkpoint=None if message["dir"] is None
                            else tune.Checkpoint.from_directory(message["dir"]))
                launch.send_frame(mine, {"ok": True})
            elif isinstance(message.get("error"), BaseException):
                error = message["error"]
                error.add_note(f"in the trial's process (pid {pid}):\n{message['traceback']}")
                raise error
            else:
                raise TrialProcessError(message.get("reason") or message["traceback"])
        code = launch.exit_code(lines)
        if code != 0:
            raise TrialProcessError(f"the process training trial {trial['trial_id']} "
                                    f"(pid {pid}) ended with exit code {code}")
        return True
    finally:
        mine.close()
        sock.close()
