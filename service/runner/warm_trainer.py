"""A fork of a node's warm trainer (``service.runner.warm``, role ``trainer``): it trains
one Tune trial for the trial's relay (``service.runner.relay``), the Ray actor Tune
runs it in, which reports for it.

The trainables report to a ``RelaySession`` here instead of Ray Tune: each epoch's
metrics, and the folder of its checkpoint (on this node's disk), go to the relay over
the channel it handed over; the relay reports them to Tune and answers once Tune has
taken them (the checkpoint copied), so the fork deletes the folder only then. A trial
Tune stops, a study cancelled or a relay killed closes the channel: the warm trainer
then kills the fork. An exception the trainable raises goes to the relay, which raises
it again: Tune sees the error it would have seen in its own process.
"""

from __future__ import annotations

import os
import pickle
import pkgutil
import socket
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.records.trial_logger import NODE_ID_VAR, NODE_IP_VAR
from service.runner.launch import recv_frame, send_frame
from trainables.tune import use_session


class RelayGone(ConnectionError):
    """The relay closed the channel (Tune stopped the trial, or the relay died)."""


class RelaySession:
    """``trainables.tune.TuneSession`` over a relay's channel."""

    def __init__(self, channel: socket.socket, trial: dict[str, Any]):
        self.channel = channel
        self.trial = trial

    def trial_id(self) -> str:
        return self.trial["trial_id"]

    def cpus(self) -> float:
        return self.trial["cpus"]

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        # the relay holds the checkpoint's folder open for the fork's whole life
        yield Path(self.trial["checkpoint"]) if self.trial["checkpoint"] else None

    def report(self, metrics: dict[str, Any], directory: Path | None = None) -> None:
        send_frame(self.channel, {"report": metrics,
                                  "dir": None if directory is None else str(directory)})
        if recv_frame(self.channel) is None:
            raise RelayGone("the trial's relay is gone")


def train(request: dict, channel_fd: int | None) -> int:
    """Run the trial of ``request``'s payload; 0 once it has ended as its trainable
    returned, 1 after sending the relay the exception it raised."""
    channel = socket.socket(fileno=channel_fd)
    trial = pickle.loads(bytes.fromhex(request["payload"]))
    os.environ[NODE_ID_VAR], os.environ[NODE_IP_VAR] = trial["node_id"], trial["node_ip"]
    use_session(RelaySession(channel, trial))
    try:
        pkgutil.resolve_name(trial["target"])(trial["config"], **pickle.loads(trial["kwargs"]))
    except RelayGone:
        return 1
    except BaseException as error:
        text = "".join(traceback.format_exception(error))
        try:
            send_frame(channel, {"error": error, "traceback": text})
        except Exception:  # not picklable: its text
            send_frame(channel, {"error": None, "traceback": text,
                                 "reason": f"{type(error).__name__}: {error}"})
        return 1
    return 0
