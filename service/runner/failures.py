"""Why a trial failed, whole, and whether the cluster or the trial is to blame.

A trial's error reaches the driver as a (remote) traceback, read by
``service.tracebacks``. :func:`failure_kind` sorts it: ``infrastructure`` (storage,
tracking store, a dead node or actor: the cluster is misconfigured or broken, and more
trials will not help) or ``trial`` (the configuration itself failed: divergence, a bad value — an
expected outcome of a search).
"""

from __future__ import annotations

import re
from pathlib import Path

from service.tracebacks import failure_reason, reason_of_exception
from service.trials import TrialState

INFRASTRUCTURE = "infrastructure"
TRIAL = "trial"
#: The key of a trial's last result that says the trial itself failed, and why.
TRIAL_FAILURE = "trial_failure"
_INFRA_TYPES = {
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
    "WorkerCrashedError", "OwnerDiedError", "ObjectLostError", "RaySystemError",
    "LocalRayletDiedError", "OutOfMemoryError", "MlflowException", "RestException",
    "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "TimeoutError",
    "PermissionError", "OperationalError", "DataUnavailableError", "TuneError",
    "StorageInternalError", "InterfaceError", "DatabaseError", "DeviceUnavailableError",
    "TrialProcessError",
}
_INFRA_TEXT = re.compile(
    r"cluster storage|storage_path|not accessible by worker nodes|checkpoint|"
    r"node .*(died|dead|failed)|raylet|actor (died|is dead)|the actor died|"
    r"No Experiment with id|tracking (server|uri)|Max retries exceeded|"
    r"actor .* is unavailable|RpcError|Socket closed|"
    r"Connection refused|could not connect|Name or service not known|"
    r"No such file or directory|Read-only file system|AWS Error|NETWORK_CONNECTION|"
    r"server closed the connection|terminating connection|connection to server",
    re.IGNORECASE,
)


def failure_reason_of(trial) -> str:
    """The failure reason of a Tune trial: its pickled exception (type and message), else
    its error file (the whole remote traceback)."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # unreadable: fall back on the text
        error = None
    if error is not None:
        return reason_of_exception(error)
    text = ""
    path = getattr(trial, "error_file", None)
    if path:
        try:
            text = Path(path).read_text()
        except OSError:
            text = ""
    text = text or getattr(trial, "error_message", None) or ""
    return failure_reason(text) if text else "trial failed (no reason recorded)"


def failure_kind(reason: str | None) -> str | None:
    if not reason:
        return None
    kind = reason.split(":", 1)[0].strip()
    if kind in _INFRA_TYPES or _INFRA_TEXT.search(reason):
        return INFRASTRUCTURE
    return TRIAL


def infrastructure_verdict(failed: dict[str, str], limit: int | None) -> str | None:
    """The message of a study that must end FAILED for its infrastructure failures:
    more than ``limit`` of them (``None``: any at all), else ``None``."""
    infra = {t: r for t, r in failed.items() if failure_kind(r) == INFRASTRUCTURE}
    if len(infra) <= (limit or 0):
        return None
    first = next(iter(infra.values())).splitlines()[0]
    return (f"{len(infra)} trials failed for infrastructure reasons "
            f"(max_failed_trials={limit}); first: {first}")


def stopped_with_the_study(summaries, message: str) -> None:
    """Trials cut short because the study failed (its infrastructure gave way) are FAILED
    with that reason, not PRUNED or PENDING as if the search had chosen to stop them."""
    for t in summaries:
        if t.state not in (TrialState.COMPLETE, TrialState.FAILED):
            t.state, t.value = TrialState.FAILED, None
            t.error = f"StudyFailed: stopped when the study failed: {message}"
            t.failure_kind = None


class TrialErrors:
    """How a trial that raised ends (``train_trial``'s ``on_error``; picklable): a failure
    of the trial itself (divergence, a bad value, its own bug) is its last result —
    ``TRIAL_FAILURE`` with the reason, the objective NaN — and is never retried; an
    infrastructure failure is raised again, and Tune restarts the trial from its last
    checkpoint while it has restarts left."""

    def __init__(self, metric: str):
        self.metric = metric

    def __call__(self, error: BaseException, epochs_done: int) -> dict | None:
        reason = reason_of_exception(error)
        if failure_kind(reason) == INFRASTRUCTURE:
            return None
        return {self.metric: float("nan"), "epoch": epochs_done, TRIAL_FAILURE: reason}


def trial_failure(result: dict | None) -> str | None:
    """Why the trial of this last result failed by itself, or None."""
    return (result or {}).get(TRIAL_FAILURE)
