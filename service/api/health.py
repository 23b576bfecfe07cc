"""Whether what the service depends on answers: the database, Ray, MLflow (``health``),
and the verdict kept fresh in the background (``HealthMonitor``), so that a probe's
request never waits on them."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from service.api.services import Services
from service.records import tracking


def _check(fn) -> dict[str, Any]:
    try:
        detail = fn()
    except Exception as error:
        return {"ok": False, "detail": " ".join(str(error).split())[:300] or type(error).__name__}
    return {"ok": True, "detail": detail or ""}


def _mlflow(services: Services) -> str:
    uri = services.settings.mlflow_tracking_uri
    if uri.startswith("http"):
        r = httpx.get(uri.rstrip("/") + "/health", timeout=5)
        r.raise_for_status()
        return uri
    tracking.client(uri).search_experiments(max_results=1)
    return uri


def health(services: Services) -> dict[str, Any]:
    """``{"status": "ok"|"degraded", "checks": {name: {ok, detail}}}``."""

    def database() -> str:
        services.db.ping()
        return services.db.engine.url.render_as_string(hide_password=True)

    checks = {"database": _check(database),
              "ray": _check(lambda: f"Ray {services.jobs.version()} at "
                                    f"{services.jobs.dashboard_url}"),
              "mlflow": _check(lambda: _mlflow(services))}
    status = "ok" if all(c["ok"] for c in checks.values()) else "degraded"
    return {"status": status, "checks": checks,
            "mlflow_ui_url": services.settings.mlflow_ui_url}


class HealthMonitor:
    """The last verdict of ``health``: ``refresh`` (the app's background task, every
    ``health_interval_s``) computes it; ``current`` serves it, computing it first if no
    verdict exists yet (one caller computes, the others wait for it)."""

    def __init__(self, services: Services):
        self.services = services
        self._report: dict[str, Any] | None = None
        self._first = threading.Lock()

    def refresh(self) -> dict[str, Any]:
        self._report = report = health(self.services)
        return report

    def current(self) -> dict[str, Any]:
        report = self._report
        if report is not None:
            return report
        with self._first:
            return self._report if self._report is not None else self.refresh()
