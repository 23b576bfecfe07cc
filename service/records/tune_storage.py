"""Where Tune keeps a study's trial checkpoints and experiment state: one setting.

``CREDIT_STORAGE`` (CLI ``--storage-path``) is either a directory — the default
``$CREDIT_HOME/ray_results``, right for one machine, or a path on a file system that
every node mounts at the same place (NFS) — or an object-store URI
``s3://bucket/prefix``. ``CREDIT_S3_ENDPOINT`` points ``s3://`` at an S3-compatible
server (``http://host:8333``); credentials come from the usual ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` variables. Checkpoints, ``Tuner.restore`` and ``--resume``
all go through :func:`tune_storage`, on the driver as on every trial's node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.settings import credit_home
from trainables.errors import ConfigError

STORAGE_ENV = "CREDIT_STORAGE"
S3_ENDPOINT_ENV = "CREDIT_S3_ENDPOINT"
S3_REQUEST_TIMEOUT_S, S3_CONNECT_TIMEOUT_S = 60.0, 10.0
S3_ATTEMPTS = 8  # a server's 5xx and a dropped connection are retried, with backoff


def storage_location() -> str:
    """The configured storage: ``CREDIT_STORAGE``, else ``$CREDIT_HOME/ray_results``."""
    return os.environ.get(STORAGE_ENV) or str(credit_home() / "ray_results")


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class TuneStorage:
    """What Tune takes: ``storage_path`` and, for an S3-compatible server, its filesystem."""

    location: str  # as configured (shown to users)
    path: str  # Tune's storage_path
    filesystem: Any = None  # pyarrow.fs.FileSystem or None

    def experiment(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def run_config(self) -> dict[str, Any]:
        return {"storage_path": self.path, "storage_filesystem": self.filesystem}

    def pyarrow_fs(self):
        """(filesystem, root path inside it) for direct reads and writes (markers)."""
        import pyarrow.fs as pafs  # deferred: heavy, and credit search checks a setting first

        if self.filesystem is not None:
            return self.filesystem, self.path
        if is_remote(self.path):
            return pafs.FileSystem.from_uri(self.path)
        return pafs.LocalFileSystem(), self.path


def tune_storage(location: str | None = None) -> TuneStorage:
    """Parse a storage setting; a malformed one is a ConfigError naming the setting."""
    location = location or storage_location()
    if location.startswith("s3://"):
        bucket = location[5:].strip("/")
        if not bucket:
            raise ConfigError(f"{STORAGE_ENV}={location!r}: name a bucket (s3://bucket/prefix)")
        endpoint = os.environ.get(S3_ENDPOINT_ENV)
        if not endpoint:
            return TuneStorage(location, location)
        import pyarrow.fs as pafs

        scheme, _, host = endpoint.partition("://")
        if not host:
            raise ConfigError(f"{S3_ENDPOINT_ENV}={endpoint!r}: must be http(s)://host:port")
        fs = pafs.S3FileSystem(
            endpoint_override=host.rstrip("/"), scheme=scheme,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_REGION", "us-east-1"),
            # the AWS SDK's defaults (3 s without a byte, 1 s to connect) fail a checkpoint
            # on a busy node or server; a slow answer is not a dead one
            request_timeout=S3_REQUEST_TIMEOUT_S, connect_timeout=S3_CONNECT_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
        )
        return TuneStorage(location, bucket, fs)
    if location.startswith("file://"):
        location = location[7:]
    if "://" in location:
        return TuneStorage(location, location)  # gs://, hdfs://...: pyarrow resolves it
    path = Path(location).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{STORAGE_ENV}={location!r}: must be an absolute path or a URI "
                          "(s3://bucket/prefix)")
    return TuneStorage(str(path), str(path))


def can_restore(storage: TuneStorage, name: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(storage.experiment(name),
                                  storage_filesystem=storage.filesystem)
