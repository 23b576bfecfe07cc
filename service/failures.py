"""Why a trial failed, whole, and whether the cluster or the trial is to blame.

A trial's error reaches the driver as a (remote) traceback. :func:`failure_reason`
keeps the innermost exception whole — its type and every line of its message (Tune's
"Unable to set up cluster storage" names the storage settings on the lines after the
first). :func:`failure_kind` sorts it: ``infrastructure`` (storage, tracking store, a
dead node or actor: the cluster is misconfigured or broken, and more trials will not
help) or ``trial`` (the configuration itself failed: divergence, a bad value — an
expected outcome of a search).
"""

from __future__ import annotations

import re
from pathlib import Path

INFRASTRUCTURE = "infrastructure"
TRIAL = "trial"
MAX_CHARS = 5000

# "RuntimeError: msg", "ray.exceptions.RayTaskError(RuntimeError): msg", "mod.XError: msg"
_EXCEPTION_START = re.compile(
    r"^(?:[\w.]+\.)?(?P<wrapper>\w+(?:Error|Exception|Exit|Interrupt))"
    r"(?:\((?P<inner>[\w.]+)\))?: ?(?P<message>.*)$")

_INFRA_TYPES = {
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
    "WorkerCrashedError", "OwnerDiedError", "ObjectLostError", "RaySystemError",
    "LocalRayletDiedError", "OutOfMemoryError", "MlflowException", "RestException",
    "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "TimeoutError",
    "PermissionError", "OperationalError", "DataUnavailableError", "TuneError",
}
_INFRA_TEXT = re.compile(
    r"cluster storage|storage_path|not accessible by worker nodes|checkpoint|"
    r"node .*(died|dead|failed)|raylet|actor (died|is dead)|the actor died|"
    r"No Experiment with id|tracking (server|uri)|Max retries exceeded|"
    r"actor .* is unavailable|RpcError|Socket closed|"
    r"Connection refused|could not connect|Name or service not known|"
    r"No such file or directory|Read-only file system",
    re.IGNORECASE,
)


def failure_reason(text: str) -> str:
    """The innermost exception of a traceback as ``Type: message`` (every line of it)."""
    lines = text.strip().splitlines()
    start = None
    for i, line in enumerate(lines):
        if line.startswith((" ", "\t")) or line.startswith("Traceback"):
            continue
        if _EXCEPTION_START.match(line.strip()):
            start = i
    if start is None:
        body = [ln for ln in lines if ln.strip()]
        return (body[-1].strip() if body else "trial failed")[:MAX_CHARS]
    m = _EXCEPTION_START.match(lines[start].strip())
    kind = (m.group("inner") or m.group("wrapper")).rsplit(".", 1)[-1]
    rest = [ln.rstrip() for ln in lines[start + 1:]]
    message = "\n".join([m.group("message").strip(), *rest]).strip()
    return f"{kind}: {message}"[:MAX_CHARS] if message else kind


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


def reason_of_exception(error: BaseException) -> str:
    """``Type: message`` of an exception; a remote one (its text a traceback) by its cause."""
    text = str(error).strip()
    if any(_EXCEPTION_START.match(line) for line in text.splitlines()):
        return failure_reason(text)  # a remote traceback: its innermost exception
    return f"{type(error).__name__}: {text}"[:MAX_CHARS] if text else type(error).__name__


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


def record_failures(tracking_uri: str, experiment_id: str, parent_run_id: str,
                    failed: dict[str, str]) -> None:
    """Put each failed trial's whole reason and its kind on its MLflow run; a run the
    trial could not close itself (its node died, its storage failed) ends FAILED here."""
    from service import tracking as T

    if not failed:
        return
    c = T.client(tracking_uri)
    for run in T.child_runs(tracking_uri, experiment_id, parent_run_id):
        reason = failed.get(run.data.tags.get(T.TRIAL_TAG))
        if reason is None:
            continue
        tags = {"credit.failure_kind": failure_kind(reason)}
        if len(reason) > len(run.data.tags.get(T.FAILURE_TAG, "")):
            tags[T.FAILURE_TAG] = reason
        for key, value in tags.items():
            c.set_tag(run.info.run_id, key, value)
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, T.STATE_TAG, "FAILED")
            c.set_terminated(run.info.run_id, status="FAILED")


def stopped_with_the_study(summaries, message: str) -> None:
    """Trials cut short because the study failed (its infrastructure gave way) are FAILED
    with that reason, not PRUNED or PENDING as if the search had chosen to stop them."""
    for t in summaries:
        if t.state not in ("COMPLETE", "FAILED"):
            t.state, t.value = "FAILED", None
            t.error = f"StudyFailed: stopped when the study failed: {message}"
            t.failure_kind = None


#: Why a trial of a resumed study has no result: Tune saves its experiment every few
#: seconds, and a trial it started after its last save is not in the saved state.
#: The Optuna user attribute that holds why a trial failed (so far: ``LOST``).
FAILURE_ATTR = "failure"
LOST = ("TrialLost: the study's driver stopped before Tune saved this trial; the resumed "
        "study ran another trial in its place")


def fail_unfinished_trials(storage, study_name: str,
                           known_trial_ids: set[str] | None = None,
                           lost_only: bool = False) -> int:
    """After the search has ended, no Optuna trial of the study may stay RUNNING. One
    whose Tune trial Tune does not know (``known_trial_ids``) was lost: it says so.
    ``lost_only``: only those (a resumed search, whose known trials go on)."""
    import optuna

    from service.settings import TUNE_TRIAL_ID

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:  # the study never reached Optuna
        return 0
    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    stale = storage.get_all_trials(study_id, deepcopy=False, states=states)
    failed = 0
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        lost = known_trial_ids is not None and t.user_attrs.get(TUNE_TRIAL_ID) not in \
            known_trial_ids
        if lost_only and not lost:
            continue
        if lost:
            storage.set_trial_user_attr(trial_id, FAILURE_ATTR, LOST)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        failed += 1
    return failed


def lost_trial_ids(storage, study_name: str) -> set[str]:
    """The Tune trial ids of the study's trials marked lost (``LOST``)."""
    from service.settings import TUNE_TRIAL_ID

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return set()
    return {t.user_attrs.get(TUNE_TRIAL_ID) for t in
            storage.get_all_trials(study_id, deepcopy=False)
            if t.user_attrs.get(FAILURE_ATTR) == LOST}
