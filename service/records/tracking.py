"""MLflow records of a study: one parent run per study, one child run per trial.

This module is the client: retries, batched writes, searches. The child run is
written by the trial itself (``service.records.trial_logger``); the parent run, and
closing what a killed or early-stopped trial (or a dead driver) left RUNNING, are
``service.records.study_runs``; the tag names are ``service.records.tags``.

A trial's MLflow calls survive transient errors (``RetryingClient``: a server
restarting, a dropped connection, a 5xx): each is retried with exponential backoff,
a bounded number of times. MLflow's own telemetry is off in every process that
imports this module (``MLFLOW_DISABLE_TELEMETRY``; it is also set in the environment
of study drivers, their trials and the local MLflow server): under load it made a
trial's ``log-batch`` fail (``'_MLFLOW_TELEMETRY_SESSION_ID'``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

#: Environment every process of ours runs MLflow with: no telemetry (read by MLflow
#: when it decides whether to send any, so set before the first MLflow call).
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
for _key, _value in MLFLOW_ENV.items():
    os.environ.setdefault(_key, _value)

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from service.records import tags  # noqa: E402

log = logging.getLogger("credit.tracking")


def account_env(username: str, password: str) -> dict[str, str]:
    """The environment that signs MLflow's client in (a server with ``basic-auth``)."""
    return {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}


def use_account(username: str, password: str) -> None:
    """Sign this process's MLflow client in as ``username`` (read by MLflow per request)."""
    os.environ.update(account_env(username, password))


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


# ------------------------------------------------------------------ transient errors
#: Retries of one MLflow call: attempts in all, first wait, cap of the wait (seconds):
#: 0.5 + 1 + 2 + 4 + 8 + 8 ≈ 24 s of waiting at most, beside MLflow's own HTTP retries.
RETRY_ATTEMPTS, RETRY_FIRST_S, RETRY_MAX_S = 7, 0.5, 8.0


def is_transient(error: BaseException) -> bool:
    """Whether an MLflow call's error may pass if the call is made again: a connection
    or timeout error, a 5xx or 429 from the server; not a 4xx (a bad request stays bad)."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() >= 500 or error.get_http_status_code() == 429
    return isinstance(error, (OSError, ConnectionError, TimeoutError)) or \
        type(error).__module__.startswith(("requests", "urllib3"))


def with_retries(fn: Callable[[], Any], what: str) -> Any:
    """``fn()``, made again after a transient error (exponential backoff, bounded)."""
    attempts, wait, max_s = RETRY_ATTEMPTS, RETRY_FIRST_S, RETRY_MAX_S
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as error:
            if attempt == attempts or not is_transient(error):
                raise
            log.warning("MLflow %s failed (attempt %d of %d, again in %.1f s): %s", what,
                        attempt, attempts, wait, " ".join(str(error).split())[:200])
            time.sleep(wait)
            wait = min(max_s, wait * 2)
    raise AssertionError("unreachable")


class RetryingClient:
    """An ``MlflowClient`` whose every call is retried on transient errors
    (``with_retries``). Calls that write are safe to repeat: params and tags are set
    to the same values again, a metric point logged twice is the same point."""

    def __init__(self, inner: MlflowClient):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return with_retries(lambda: attr(*args, **kwargs), name)

        return call


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """The id of the MLflow experiment ``name``, created (once, here) if missing."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it meanwhile
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _batched(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_params(c: MlflowClient | RetryingClient, run_id: str, params: dict[str, Any]) -> None:
    flat = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    for chunk in _batched(flat, 100):
        c.log_batch(run_id, params=chunk)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]


def log_metrics(c: MlflowClient | RetryingClient, run_id: str, metrics: dict[str, float],
                step: int, tags: dict[str, str] | None = None) -> None:
    """The finite ``metrics`` at ``step``; ``tags`` in the same (last) call."""
    now = int(time.time() * 1000)
    rows = [
        Metric(k, float(v), now, step)
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if not rows and not tags:
        return
    chunks = list(_batched(rows, 900)) or [[]]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        c.log_batch(run_id, metrics=chunk,
                    tags=[RunTag(k, v) for k, v in (tags or {}).items()] if last else [])


def find_runs(tracking_uri: str, experiment_id: str, filter_string: str) -> list:
    c = client(tracking_uri)
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list:
    return find_runs(tracking_uri, experiment_id, f"tags.`{tags.PARENT}` = '{parent_run_id}'")
