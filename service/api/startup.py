"""What ``credit serve`` checks before it starts the API: that the Ray cluster it would
submit studies to can run them with these settings (``service.runner.preflight``
names what a multi-host cluster needs)."""

from __future__ import annotations

from service.api.config import ApiSettings
from service.jobs import JobError, RayJobs
from service.runner.preflight import serve_problem


def serve_refusal(settings: ApiSettings) -> str | None:
    """Why ``credit serve`` must not start with this cluster, or None (also when the
    cluster cannot be reached: the API answers 503 for that itself)."""
    token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
    try:
        nodes = RayJobs(settings.ray_dashboard_url, token, timeout_s=10).nodes()
    except JobError:
        return None
    return serve_problem(settings, nodes)
