"""``Services``: everything the study domain uses (settings, the study records, the
Ray Jobs client, the Optuna and MLflow stores), made once per app."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from service.api.config import ApiSettings
from service.jobs import NodeResources, RayJobs
from service.records import db, links, mlflow_access, tracking
from service.records.optuna_trials import open_storage
from service.spec import StudySpec

log = logging.getLogger("credit.api")

#: How many studies' parsed specs ``Services.spec_of`` keeps.
MAX_SPECS = 1024


# ----------------------------------------------------------------------- services
@dataclass
class Services:
    """Everything the domain functions use, made once per app."""

    settings: ApiSettings
    db: db.Database
    jobs: RayJobs
    submit_lock: threading.Lock = field(default_factory=threading.Lock)
    _storage: Any = None
    _storage_lock: threading.Lock = field(default_factory=threading.Lock)
    _nodes: tuple[float, list[NodeResources]] | None = None
    _specs: dict[str, StudySpec] = field(default_factory=dict)
    _specs_lock: threading.Lock = field(default_factory=threading.Lock)
    _mlflow_users_synced: bool = False

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> Services:
        token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
        return cls(settings=settings, db=db.Database(settings.database_url),
                   jobs=RayJobs(settings.ray_dashboard_url, token=token,
                                python=settings.job_python))

    def prepare(self) -> None:
        """Create local state once, before any study runs: the record table, the
        Optuna schema and a local MLflow store (a new sqlite store that several study
        drivers open at once fails)."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.db.create_all()
        self.optuna_storage()
        uri = self.settings.mlflow_tracking_uri
        if uri.startswith("sqlite:"):
            # the artifact root the runner gives a local store (CREDIT_HOME/mlartifacts)
            tracking.ensure_experiment(uri, self.settings.experiment_name,
                                       (self.settings.home / "mlartifacts").as_uri())
        try:
            self.sync_mlflow_users()
        except Exception as error:  # MLflow down: the sync loop tries again
            log.warning("MLflow's users not brought in step yet (tried again): %s", error)

    def sync_mlflow_users(self) -> None:
        """Where MLflow asks who is there, once per process: each named owner an MLflow
        user whose password is their token (``mlflow_access.sync_users``), owners whose
        token is gone locked out."""
        if not self.settings.mlflow_auth or self._mlflow_users_synced:
            return
        with self.db.session() as session:
            former = db.owners(session)
        mlflow_access.sync_users(self.settings.mlflow_tracking_uri, self.settings.owners,
                                 former)
        self._mlflow_users_synced = True
        log.info("MLflow users in step with the API's %d owners", len(self.settings.owners))

    def optuna_storage(self):
        with self._storage_lock:
            if self._storage is None:
                self._storage = open_storage(self.settings.optuna_storage)
            return self._storage

    def spec_of(self, record: db.StudyRecord) -> StudySpec:
        """The study's spec, parsed once (a study's spec never changes). Its
        ``tracking_uri`` is the address MLflow had at submission: the service's own
        (``settings.mlflow_tracking_uri``) is the one to use, since MLflow may have moved."""
        with self._specs_lock:
            spec = self._specs.get(record.id)
            if spec is None:
                spec = StudySpec.model_validate(record.spec)
                if len(self._specs) >= MAX_SPECS:  # the oldest goes
                    self._specs.pop(next(iter(self._specs)))
                self._specs[record.id] = spec
            return spec

    def cluster_nodes(self, max_age_s: float = 10.0) -> list[NodeResources]:
        cached = self._nodes
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        nodes = [n for n in self.jobs.nodes() if n.alive]
        self._nodes = (time.monotonic(), nodes)
        return nodes

    def mlflow_link(self, experiment_id: str | None, run_id: str | None) -> str | None:
        """The page of MLflow run ``run_id`` in the service's MLflow UI."""
        return links.mlflow_run(self.settings.mlflow_ui_url, experiment_id, run_id)
