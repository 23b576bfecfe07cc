"""A trial's own MLflow run, written by the trial itself (a trainer callback): params,
per-epoch metrics as steps, plots as artifacts, and its end (FINISHED, or FAILED with
the reason). A restored trial keeps logging to the run it started: the run id is part
of the trainer checkpoint."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import RunTag

from service.records import tags
from service.records.tracking import RetryingClient, client, log_metrics, log_params, with_retries
from trainables import plots
from trainables.callbacks import Callback, Training
from trainables.errors import CreditError


def run_name(study: str, role: str, trial_id: str, seed: int) -> str:
    """A run's readable name: ``<study>/trial-<n>`` (n from Tune's ``xxxxx_0000n``) or,
    for the final evaluation, ``<study>/seed-<seed>``."""
    if role == "final":
        return f"{study}/seed-{seed}"
    tail = trial_id.rsplit("_", 1)[-1]
    return f"{study}/{role}-{int(tail) if tail.isdigit() else trial_id}"


#: The Ray node of a trial trained outside Ray's own processes (a fork of the node's
#: warm trainer: ``service.runner.warm_trainer`` sets them from its relay's).
NODE_ID_VAR, NODE_IP_VAR = "CREDIT_TRIAL_NODE_ID", "CREDIT_TRIAL_NODE_IP"


def _where() -> dict[str, str]:
    """Which machine and Ray node ran the trial (tags, for multi-node clusters)."""
    where = {tags.HOST: socket.gethostname()}
    if os.environ.get(NODE_ID_VAR):
        where[tags.NODE_ID] = os.environ[NODE_ID_VAR]
        where[tags.NODE_IP] = os.environ.get(NODE_IP_VAR, "")
        return where
    try:
        import ray  # deferred: a trial runs under Ray, the tests of this logger do not

        if ray.is_initialized():
            where[tags.NODE_ID] = ray.get_runtime_context().get_node_id()
            where[tags.NODE_IP] = ray.util.get_node_ip_address()
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
        self.logged: set[int] = set()  # epochs a previous attempt of this trial logged
        self._client: RetryingClient | None = None

    @property
    def client(self) -> RetryingClient:
        if self._client is None:
            self._client = RetryingClient(client(self.tracking_uri))
        return self._client

    # --------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Training) -> None:
        if self.run_id is None:  # a trial restarted before its first checkpoint
            self.run_id = self._existing_run()
        if self.run_id is not None:  # restored: keep logging to the same run
            if trainer.epoch >= trainer.config.epochs:
                self.closed = True  # it had finished; only the driver lost track of it
            else:
                self._continue_run()
            return
        attempts = 0
        where = _where()  # the node it runs on: tags of the new run
        if tags.NODE_IP in where:
            where[tags.NODES] = where[tags.NODE_IP]

        def create() -> str:
            # a retry first looks for the run the lost answer may have created
            nonlocal attempts
            attempts += 1
            found = self._existing_run() if attempts > 1 else None
            return found or self.client.inner.create_run(
                self.experiment_id,
                run_name=run_name(self.study, self.role, self.trial_id, trainer.config.seed),
                tags={tags.PARENT: self.parent_run_id, tags.STUDY: self.study,
                      tags.ROLE: self.role, tags.TRIAL: self.trial_id, **where},
            ).info.run_id

        self.run_id = with_retries(create, "create_run")
        log_params(self.client, self.run_id, trainer.config.model_dump())
        self._check_study_alive()

    def _continue_run(self) -> None:
        """A restarted trial (after its node died, or its stores failed) goes on in its run:
        RUNNING again, without the failure an earlier attempt may have recorded; its node
        added to the nodes it ran on; the epochs already logged are not logged twice (a
        restored trial redoes them bit for bit from its checkpoint)."""
        run = self.client.get_run(self.run_id)
        for key in (tags.FAILURE, tags.STATE, tags.FAILURE_KIND):
            if key in run.data.tags:
                self.client.delete_tag(self.run_id, key)
        self.client.update_run(self.run_id, status="RUNNING")
        self.logged = {int(m.step) for m in self.client.get_metric_history(self.run_id, "epoch")}
        where = _where()
        nodes = [n for n in run.data.tags.get(tags.NODES, "").split(",") if n]
        if where.get(tags.NODE_IP) and where[tags.NODE_IP] not in nodes[-1:]:
            nodes.append(where[tags.NODE_IP])
            where[tags.NODES] = ",".join(nodes)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in where.items()])

    def _check_study_alive(self) -> None:
        """A trial that starts after its study was stopped (the driver ends its parent
        run first, then closes the children) closes its own run and does not train."""
        status = self.client.get_run(self.parent_run_id).info.status
        if status != "RUNNING":
            self.client.set_tag(self.run_id, tags.STATE, "STALE")
            self.client.set_terminated(self.run_id, status="KILLED")
            self.closed = True
            raise CreditError(f"study {self.study!r} has ended (its MLflow run is {status}); "
                              f"trial {self.trial_id} does not start")

    def _existing_run(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{tags.PARENT}` = '{self.parent_run_id}' and tags.`{tags.TRIAL}` = "
            f"'{self.trial_id}' and tags.`{tags.ROLE}` = '{self.role}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def on_epoch_end(self, trainer: Training, metrics: dict[str, float]) -> None:
        last = trainer.epoch >= trainer.config.epochs
        if last:  # finish now, before the final report: Tune may stop the trial inside it
            self._log_plots(trainer)
        # one point per epoch, also when redone; the last with the trial's state
        fresh = int(metrics["epoch"]) not in self.logged
        log_metrics(self.client, self.run_id, metrics if fresh else {},
                    step=int(metrics["epoch"]), tags={tags.STATE: "COMPLETE"} if last else None)
        if last:
            self.client.set_terminated(self.run_id, status="FINISHED")
            self.closed = True

    def on_fit_error(self, trainer: Training, error: BaseException) -> None:
        if self.run_id is None or self.closed:
            return
        self.closed = True
        if isinstance(error, SystemExit):  # Tune stopped the trial inside report()
            self.client.set_tag(self.run_id, tags.STATE, "PRUNED")
            self.client.set_terminated(self.run_id, status="KILLED")
            return
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.client.log_batch(self.run_id, tags=[RunTag(tags.FAILURE, reason[:5000]),
                                                  RunTag(tags.STATE, "FAILED")])
        if trainer.history:
            self._log_plots(trainer)
        self.client.set_terminated(self.run_id, status="FAILED")

    def state_dict(self) -> dict | None:
        return None if self.run_id is None else {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]

    # -------------------------------------------------------------- artifacts
    def _log_plots(self, trainer: Training) -> None:
        extra: dict[str, Any] = {}
        if trainer.experiment.code_layer is not None:
            extra["codes"], extra["labels"] = trainer.latent_codes(limit=2000)
            extra["originals"], extra["recon"] = trainer.reconstructions(8)
        title = f"{trainer.config.rule} · {self.role} {self.trial_id}"
        # the curves: a population's members share one renderer (their axes in common)
        curves = trainer.curve_sheets().render(trainer.history, title)
        with tempfile.TemporaryDirectory(prefix="credit-plots-") as tmp:
            for name, png in curves.items():
                (Path(tmp) / name).write_bytes(png)
            if extra:
                plots.save_figures(plots.autoencoder_figures(**extra, title=title), tmp)
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
