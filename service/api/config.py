"""The study service's settings: one pydantic-settings object, read from ``CREDIT_*``.

Every field is an environment variable named ``CREDIT_`` + the field in capitals
(``CREDIT_API_TOKENS``, ``CREDIT_RAY_DASHBOARD_URL``, ...). Paths default to files
under ``CREDIT_HOME`` (``~/.credit``), as ``service.settings`` lays them out, so the
API, ``credit search`` and the study runner share one local installation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import settings as defaults
from service.api.docs_assets import ASSET_PATHS
from service.api.principals import Principal, principals_of

#: MLflow's basic-auth app refuses shorter passwords.
MIN_MLFLOW_PASSWORD = 12

#: Paths anyone may call without a token: the page shells (no data: they fetch it with
#: the token), the probes, the docs.
OPEN_PATHS = ("/", "/ui/compare", "/healthz", "/livez", "/readyz", "/docs",
              "/docs/oauth2-redirect", "/redoc", "/openapi.json", *ASSET_PATHS)


class ApiSettings(BaseSettings):
    """How the API runs, where it keeps state, which cluster and stores it uses."""

    model_config = SettingsConfigDict(env_prefix="CREDIT_", extra="ignore",
                                      validate_default=True, populate_by_name=True)

    home: Path = Field(Path(defaults.DEFAULT_HOME), description="local state (CREDIT_HOME)")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the study records (sqlite in CREDIT_HOME)")
    api_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="bearer tokens, comma-separated: TOKEN (sees every study), "
                        "NAME:TOKEN (sees its own), NAME:TOKEN:admin (sees every study); "
                        "a request needs one of them (service.api.principals)")
    insecure: bool = Field(
        False, description="allow running with no token at all (every request is let in)")

    ray_dashboard_url: str = Field("http://127.0.0.1:8265",
                                   description="Ray dashboard (Jobs API) of the cluster")
    ray_auth_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("CREDIT_RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN"),
        description="the cluster's Ray auth token (token authentication)")
    ray_node_ip: str | None = Field(
        None, description="node IP drivers register (CREDIT_RAY_NODE_IP, for jobs)")
    job_python: str = Field(sys.executable,
                            description="the Python that runs a study's driver on the cluster")
    job_entrypoint_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom resources a study's driver reserves (JSON), e.g. to pin it")

    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI the studies log to (MLFLOW_TRACKING_URI, "
                          "else sqlite in CREDIT_HOME)")
    mlflow_ui_url: str | None = Field(
        None, description="base URL of the MLflow UI for links (default: the tracking "
                          "URI when it is http)")
    optuna_storage: str | None = Field(
        None, description="Optuna storage URL (sqlite in CREDIT_HOME)")
    optuna_dashboard_url: str | None = Field(
        None, description="base URL of an optuna-dashboard on that storage, for links")
    experiment_name: str = Field("credit-search", min_length=1, max_length=200)
    data_dir: str | None = Field(None, description="CREDIT_DATA_DIR, handed to studies")
    storage: str | None = Field(
        None, description="Tune storage of checkpoints (CREDIT_STORAGE): a path every node "
                          "mounts, or s3://bucket/prefix (default CREDIT_HOME/ray_results)")
    s3_endpoint: str | None = Field(
        None, description="S3-compatible server for s3:// storage (CREDIT_S3_ENDPOINT)")

    max_trials_per_study: int = Field(1000, ge=1, le=10_000)
    max_concurrent_studies: int = Field(
        4, ge=1, le=1000, description="studies running at once on this server (more wait "
                                      "QUEUED, started fairly between owners)")
    max_running_per_owner: int | None = Field(
        None, ge=1, le=1000, description="studies one owner may run at once (default: the "
                                         "server's limit); the rest of theirs wait QUEUED")
    max_queued_per_owner: int = Field(
        50, ge=0, le=100_000, description="QUEUED studies one owner may have; one more is "
                                          "answered 429")
    mlflow_username: str = Field(
        "credit-service", pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="the service's own MLflow account (an MLflow admin): it writes every "
                    "run where MLflow asks who is there")
    mlflow_password: SecretStr | None = Field(
        None, description="that account's password (CREDIT_MLFLOW_PASSWORD): set, MLflow "
                          "runs its basic-auth app, each named owner is an MLflow user "
                          "(password: their API token) who reads only their studies")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    sync_interval_s: float = Field(2.0, gt=0, le=60)
    health_interval_s: float = Field(
        5.0, gt=0, le=300, description="seconds between the background checks of the "
                                       "database, Ray and MLflow that /healthz and /readyz serve")
    cancel_timeout_s: float = Field(30.0, gt=0, le=600)
    startup_timeout: float = Field(
        600.0, gt=0, le=86_400,
        description="seconds the local stack (credit serve --local) may take to start")
    lost_job_grace_s: float = Field(
        60.0, gt=0, description="a study whose Ray job is unknown this long is FAILED")

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("api_tokens", mode="after")
    @classmethod
    def _check_principals(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        principals_of([t.get_secret_value() for t in value])  # ValueError if malformed
        return value

    @model_validator(mode="after")
    def _check_mlflow_accounts(self) -> ApiSettings:
        if self.mlflow_password is None:
            return self
        if len(self.mlflow_password.get_secret_value()) < MIN_MLFLOW_PASSWORD:
            raise ValueError(f"CREDIT_MLFLOW_PASSWORD must be at least {MIN_MLFLOW_PASSWORD} "
                             "characters (MLflow's rule for passwords)")
        for token, principal in self.principals.items():
            if principal.name == self.mlflow_username:
                raise ValueError(f"owner {principal.name!r} has the name of the service's "
                                 "MLflow account (CREDIT_MLFLOW_USERNAME): rename one")
            if principal.name and len(token) < MIN_MLFLOW_PASSWORD:
                raise ValueError(f"owner {principal.name!r}'s token is their MLflow password: "
                                 f"it must be at least {MIN_MLFLOW_PASSWORD} characters")
        return self

    @field_validator("home", mode="after")
    @classmethod
    def _resolve_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _defaults(self) -> ApiSettings:
        if self.database_url is None:
            self.database_url = defaults.database_url_under(self.home)
        if self.optuna_storage is None:
            self.optuna_storage = defaults.optuna_storage_under(self.home)
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = defaults.tracking_uri_under(self.home)
        if self.mlflow_ui_url is None and self.mlflow_tracking_uri.startswith("http"):
            self.mlflow_ui_url = self.mlflow_tracking_uri
        if self.mlflow_ui_url:
            self.mlflow_ui_url = self.mlflow_ui_url.rstrip("/")
        self.ray_dashboard_url = self.ray_dashboard_url.rstrip("/")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def tokens(self) -> list[str]:
        """The bearer tokens alone (without principal names or roles)."""
        return list(self.principals)

    @property
    def principals(self) -> dict[str, Principal]:
        """Token → ``Principal`` (``service.api.principals``)."""
        return principals_of([t.get_secret_value() for t in self.api_tokens])

    @property
    def owners(self) -> dict[str, tuple[str, bool]]:
        """Named owner → (token, admin); unnamed tokens are no one's."""
        return {p.name: (token, p.admin) for token, p in self.principals.items() if p.name}

    @property
    def mlflow_auth(self) -> bool:
        """Whether MLflow asks who is there (the service holds an MLflow account)."""
        return self.mlflow_password is not None

    @property
    def running_per_owner(self) -> int:
        return self.max_running_per_owner or self.max_concurrent_studies

    def job_env(self) -> dict[str, str]:
        """Environment of a study's driver (and its trials) on the cluster."""
        # no MLflow telemetry in drivers and trials (service.records.tracking says why)
        env = {"CREDIT_HOME": str(self.home), "MLFLOW_DISABLE_TELEMETRY": "true"}
        for key, value in (("CREDIT_DATA_DIR", self.data_dir),
                           ("CREDIT_RAY_NODE_IP", self.ray_node_ip),
                           ("CREDIT_STORAGE", self.storage),
                           ("CREDIT_S3_ENDPOINT", self.s3_endpoint),
                           ("CREDIT_CACHE_DIR", os.environ.get("CREDIT_CACHE_DIR"))):
            if value:
                env[key] = value
        return env

    def check_startable(self) -> None:
        """Refuse to run open to anyone by accident: tokens, or an explicit ``insecure``."""
        if not self.tokens and not self.insecure:
            raise ValueError("no API token configured: set CREDIT_API_TOKENS (comma-separated) "
                             "or, to let every request in, CREDIT_INSECURE=1 / --insecure")
