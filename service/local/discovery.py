"""How a new shell finds the local service: ``CREDIT_HOME/server.json``.

``credit serve --local`` writes it once its stack is up (the API's address, the path
of the API token file, the MLflow UI, the Ray dashboard and the path of its token
file, the Optuna dashboard) and removes it when it stops. ``credit studies`` reads it
when neither ``--url`` nor ``CREDIT_URL`` is given. Tokens are never in it: only the
paths of their 0600 files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SERVER_FILE = "server.json"


def home_dir() -> Path:
    """``CREDIT_HOME`` (default ``~/.credit``), not created."""
    return Path(os.environ.get("CREDIT_HOME") or "~/.credit").expanduser().resolve()


def server_file(home: Path | None = None) -> Path:
    return (home or home_dir()) / SERVER_FILE


def write_secret(path: Path, value: str) -> Path:
    """``value`` into ``path``, readable by its owner only (0600, also if it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return path


def write_server(home: Path, record: dict[str, Any]) -> Path:
    """Record a running local service (``record`` holds no secret, only file paths)."""
    path = server_file(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**record, "pid": os.getpid()}, indent=2) + "\n")
    tmp.replace(path)
    return path


def remove_server(home: Path) -> None:
    """Remove the record if this process wrote it (a newer server's stays)."""
    path = server_file(home)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def read_server(home: Path | None = None) -> dict[str, Any] | None:
    """The recorded service, with ``running`` saying whether its process is alive;
    ``None`` if there is no readable record."""
    try:
        record = json.loads(server_file(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str):
        return None
    pid = record.get("pid")
    running = isinstance(pid, int) and pid > 0
    if running:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            running = False
        except PermissionError:
            pass
    record["running"] = running
    return record
