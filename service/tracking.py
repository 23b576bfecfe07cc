"""MLflow records of a study: one parent run per study, one child run per trial.

The child run is written by the trial itself (``MlflowTrialLogger``, a trainer
callback), so a restored trial keeps logging to the run it started: its id is part
of the trainer checkpoint. The parent run, and closing what a killed or early-stopped
trial (or a dead driver) left RUNNING, are ``service.study_runs``.

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
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: Environment every process of ours runs MLflow with: no telemetry (read by MLflow
#: when it decides whether to send any, so set before the first MLflow call).
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
for _key, _value in MLFLOW_ENV.items():
    os.environ.setdefault(_key, _value)

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from trainables.errors import CreditError  # noqa: E402
from trainables.trainer import Callback, Trainer  # noqa: E402

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "credit.study"
ROLE_TAG = "credit.role"  # study | trial | final | campaign
TRIAL_TAG = "credit.trial_id"
STATE_TAG = "credit.state"  # COMPLETE | FAILED | PRUNED | STALE | LOST
FAILURE_TAG = "credit.failure"
DRIVER_TAG = "credit.driver"  # host:pid:start of the process that runs the study


log = logging.getLogger("credit.tracking")


def run_name(study: str, role: str, trial_id: str, seed: int) -> str:
    """A run's readable name: ``<study>/trial-<n>`` (n from Tune's ``xxxxx_0000n``) or,
    for the final evaluation, ``<study>/seed-<seed>``."""
    if role == "final":
        return f"{study}/seed-{seed}"
    tail = trial_id.rsplit("_", 1)[-1]
    return f"{study}/{role}-{int(tail) if tail.isdigit() else trial_id}"


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
                step: int) -> None:
    now = int(time.time() * 1000)
    rows = [
        Metric(k, float(v), now, step)
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for chunk in _batched(rows, 900):
        c.log_batch(run_id, metrics=chunk)


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
    return find_runs(tracking_uri, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


def _where() -> dict[str, str]:
    """Which machine and Ray node ran the trial (tags, for multi-node clusters)."""
    import socket

    where = {"credit.host": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            where["credit.node_id"] = ray.get_runtime_context().get_node_id()
            where["credit.node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # not under Ray
        pass
    return where


class MlflowTrialLogger(Callback):
    """Writes one trial to its own MLflow child run: params, per-epoch metrics as
    steps, plots as artifacts, and a final status (FINISHED or FAILED + reason)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        study: str,
        trial_id: str,
        role: str = "trial",
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.trial_id = trial_id
        self.role = role
        self.run_id: str | None = None
        self.closed = False
        self._client: RetryingClient | None = None

    @property
    def client(self) -> RetryingClient:
        if self._client is None:
            self._client = RetryingClient(client(self.tracking_uri))
        return self._client

    # --------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer) -> None:
        if self.run_id is None:  # a trial restarted before its first checkpoint
            self.run_id = self._existing_run()
        if self.run_id is not None:  # restored: keep logging to the same run
            if trainer.epoch >= trainer.config.epochs:
                self.closed = True  # it had finished; only the driver lost track of it
            else:
                self.client.update_run(self.run_id, status="RUNNING")
            return
        attempts = 0

        def create() -> str:
            # a retry first looks for the run the lost answer may have created
            nonlocal attempts
            attempts += 1
            found = self._existing_run() if attempts > 1 else None
            return found or self.client.inner.create_run(
                self.experiment_id,
                run_name=run_name(self.study, self.role, self.trial_id, trainer.config.seed),
                tags={PARENT_TAG: self.parent_run_id, STUDY_TAG: self.study,
                      ROLE_TAG: self.role, TRIAL_TAG: self.trial_id},
            ).info.run_id

        self.run_id = with_retries(create, "create_run")
        log_params(self.client, self.run_id, trainer.config.model_dump())
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in _where().items()])
        self._check_study_alive()

    def _check_study_alive(self) -> None:
        """A trial that starts after its study was stopped (the driver ends its parent
        run first, then closes the children) closes its own run and does not train."""
        status = self.client.get_run(self.parent_run_id).info.status
        if status != "RUNNING":
            self.client.set_tag(self.run_id, STATE_TAG, "STALE")
            self.client.set_terminated(self.run_id, status="KILLED")
            self.closed = True
            raise CreditError(f"study {self.study!r} has ended (its MLflow run is {status}); "
                              f"trial {self.trial_id} does not start")

    def _existing_run(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = "
            f"'{self.trial_id}' and tags.`{ROLE_TAG}` = '{self.role}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        log_metrics(self.client, self.run_id, metrics, step=int(metrics["epoch"]))
        if trainer.epoch >= trainer.config.epochs:
            # Finish now, before the final report: Tune may stop the trial inside it.
            self._log_plots(trainer)
            self.client.set_tag(self.run_id, STATE_TAG, "COMPLETE")
            self.client.set_terminated(self.run_id, status="FINISHED")
            self.closed = True

    def on_fit_error(self, trainer: Trainer, error: BaseException) -> None:
        if self.run_id is None or self.closed:
            return
        self.closed = True
        if isinstance(error, SystemExit):  # Tune stopped the trial inside report()
            self.client.set_tag(self.run_id, STATE_TAG, "PRUNED")
            self.client.set_terminated(self.run_id, status="KILLED")
            return
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.client.log_batch(self.run_id, tags=[RunTag(FAILURE_TAG, reason[:5000]),
                                                  RunTag(STATE_TAG, "FAILED")])
        if trainer.history:
            self._log_plots(trainer)
        self.client.set_terminated(self.run_id, status="FAILED")

    def state_dict(self) -> dict | None:
        return None if self.run_id is None else {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]

    # -------------------------------------------------------------- artifacts
    def _log_plots(self, trainer: Trainer) -> None:
        from trainables import plots

        extra: dict[str, Any] = {}
        if trainer.experiment.code_layer is not None:
            extra["codes"], extra["labels"] = trainer.latent_codes(limit=2000)
            extra["originals"], extra["recon"] = trainer.reconstructions(8)
        title = f"{trainer.config.rule} · {self.role} {self.trial_id}"
        figures = plots.trial_figures(trainer.history, title=title, **extra)
        with tempfile.TemporaryDirectory(prefix="credit-plots-") as tmp:
            plots.save_figures(figures, tmp)
            if extra:
                import numpy as np

                np.savez_compressed(Path(tmp) / "autoencoder.npz", **extra)
            self.client.log_artifacts(self.run_id, tmp, artifact_path="plots")


class TrialLoggerFactory:
    """Picklable factory the trainable calls to get its MLflow callback."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study: str,
                 role: str = "trial"):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.role = role

    def __call__(self, config, trial_id: str) -> list[Callback]:
        return [MlflowTrialLogger(self.tracking_uri, self.experiment_id, self.parent_run_id,
                                  self.study, trial_id, self.role)]
