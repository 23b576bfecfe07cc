"""Studies as Ray Jobs: submit, follow, stop — over the dashboard's HTTP API only.

The service never joins the cluster as a driver: ``JobSubmissionClient`` talks to
the dashboard (Jobs API), and the state API answers what the cluster holds. Each
study is one job whose entrypoint is the study runner: the job outlives the API
process, and the API finds it again by its submission id after a restart.

The spec travels in the job's runtime environment (``CREDIT_STUDY_SPEC``, JSON), so
the driver reads it on whichever node runs it, with no shared file system; the
entrypoint is ``python -m service.runner.launch``, which hands the study to its node's
warm driver (``service.runner.warm``: the study runner imported once, one fork per
study) or, where there is none yet, becomes ``python -m service.runner.job``; either
reads the spec from there. Not the job's
``working_dir``: on one machine its nodes share Ray's temp dir, and one node's
runtime-env agent deletes the package another still runs in. Every call here
blocks (HTTP): callers run them off the event loop.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from trainables.errors import CreditError

#: Ray job statuses after which a job never runs again.
JOB_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
#: The environment variable that carries a study's spec (JSON) to its driver.
SPEC_VAR = "CREDIT_STUDY_SPEC"


class JobError(CreditError):
    """The Ray cluster could not be reached, or refused a request (message says which)."""


class JobNotFound(JobError):
    """No job of that submission id on this cluster."""


@dataclass
class JobInfo:
    submission_id: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str = ""
    job_id: str | None = None  # Ray's own job id (hex), once the driver started
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None


@dataclass
class NodeResources:
    node_id: str
    alive: bool
    resources: dict[str, float] = field(default_factory=dict)
    node_ip: str = ""


class RayJobs:
    """A study-shaped front over ``JobSubmissionClient`` for one cluster's dashboard.

    ``token`` is the cluster's Ray auth token (token authentication); without one,
    Ray's own lookup (``RAY_AUTH_TOKEN``, the token file) applies.
    """

    def __init__(self, dashboard_url: str, token: str | None = None,
                 python: str | None = None, timeout_s: float = 30.0):
        self.dashboard_url = dashboard_url.rstrip("/")
        self.token = token
        self.python = python or sys.executable
        self.timeout_s = timeout_s
        self._client = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self):
        """The ``JobSubmissionClient`` (made on first use: its constructor calls the cluster)."""
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self.dashboard_url,
                                                       headers=self.headers or None)
                except Exception as error:  # ConnectionError, RuntimeError (auth)
                    raise JobError(f"Ray dashboard {self.dashboard_url} unreachable: "
                                   f"{_one_line(error)}") from None
            return self._client

    def _get(self, path: str) -> Any:
        import httpx

        try:
            r = httpx.get(self.dashboard_url + path, headers=self.headers, timeout=self.timeout_s)
        except httpx.HTTPError as error:
            raise JobError(f"Ray dashboard {self.dashboard_url} unreachable: "
                           f"{_one_line(error)}") from None
        if r.status_code != 200:
            raise JobError(f"Ray dashboard {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    # ----------------------------------------------------------------------- jobs
    def entrypoint(self) -> str:
        return f"{shlex.quote(self.python)} -m service.runner.launch"

    def submit(self, submission_id: str, spec_json: str, env_vars: dict[str, str],
               metadata: dict[str, str] | None = None,
               entrypoint_resources: dict[str, float] | None = None) -> str:
        """Start the study runner on the cluster for the spec ``spec_json`` (a
        ``StudySpec``'s JSON text) as job ``submission_id``."""
        env = {k: v for k, v in env_vars.items() if v is not None}
        env[SPEC_VAR] = spec_json
        try:
            return self.client().submit_job(
                entrypoint=self.entrypoint(), submission_id=submission_id,
                runtime_env={"env_vars": env}, metadata=metadata or {},
                entrypoint_resources=entrypoint_resources or None,
            )
        except JobError:
            raise
        except Exception as error:
            raise JobError(f"Ray refused job {submission_id}: {_one_line(error)}") from None

    def info(self, submission_id: str) -> JobInfo:
        try:
            d = self.client().get_job_info(submission_id)
        except Exception as error:
            raise _job_error(submission_id, error) from None
        return JobInfo(submission_id=submission_id, status=str(d.status.value),
                       message=d.message or "", job_id=d.job_id,
                       start_time=d.start_time, end_time=d.end_time,
                       exit_code=getattr(d, "driver_exit_code", None))

    def stop(self, submission_id: str) -> bool:
        """Ask the job to stop (SIGTERM to the driver, SIGKILL after a grace period)."""
        try:
            return bool(self.client().stop_job(submission_id))
        except Exception as error:
            raise _job_error(submission_id, error) from None

    def wait(self, submission_id: str, timeout_s: float, poll_s: float = 0.5) -> JobInfo:
        """The job's info once it is terminal, or as it is when ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info(submission_id)
            if info.status in JOB_ENDED or time.monotonic() >= deadline:
                return info
            time.sleep(poll_s)

    def logs(self, submission_id: str) -> str:
        try:
            return self.client().get_job_logs(submission_id)
        except Exception:
            return ""

    def list(self) -> list[JobInfo]:
        try:
            jobs = self.client().list_jobs()
        except JobError:
            raise
        except Exception as error:
            raise JobError(f"Ray jobs: {_one_line(error)}") from None
        return [JobInfo(submission_id=j.submission_id or "", status=str(j.status.value),
                        message=j.message or "", job_id=j.job_id) for j in jobs]

    # -------------------------------------------------------------------- cluster
    def version(self) -> str:
        return str(self._get("/api/version").get("ray_version", "?"))

    def nodes(self) -> list[NodeResources]:
        """The cluster's nodes and what each holds in all (state API)."""
        data = self._get("/api/v0/nodes?limit=1000&detail=false")
        rows = (data.get("data") or {}).get("result") or {}
        rows = rows.get("result", []) if isinstance(rows, dict) else rows
        return [NodeResources(node_id=r.get("node_id", ""), alive=r.get("state") == "ALIVE",
                              resources={k: float(v) for k, v in
                                         (r.get("resources_total") or {}).items()},
                              node_ip=r.get("node_ip") or "")
                for r in rows]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:500]


def _job_error(submission_id: str, error: Exception) -> Exception:
    """A Ray Jobs client error as ours: unknown job → JobNotFound, else JobError."""
    if isinstance(error, JobError):
        return error
    if "404" in str(error) or "does not exist" in str(error):
        return JobNotFound(f"no Ray job {submission_id!r}")
    return JobError(f"Ray job {submission_id}: {_one_line(error)}")
