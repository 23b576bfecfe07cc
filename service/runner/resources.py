"""Whether the cluster can hold a study's trials at all: while a trial waits and no
alive node has the resources one trial asks for (its node died and none like it is
left), the study says so (the Optuna study attribute ``WAITING_ATTR``, which the API
shows as the study's message) and waits up to ``CREDIT_RESOURCE_WAIT_S``; then it
fails, naming what it waited for. A node that joins meanwhile (restarted, or added)
ends the wait: Ray places the waiting trials on it."""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from service.records.optuna_trials import WAITING_ATTR, set_study_attr
from service.runner.recovery import log

RESOURCE_WAIT_ENV, RESOURCE_WAIT_S = "CREDIT_RESOURCE_WAIT_S", 600.0
CHECK_EVERY_S = 2.0


def resource_wait_s() -> float:
    return float(os.environ.get(RESOURCE_WAIT_ENV) or RESOURCE_WAIT_S)


def ray_request(resources: dict[str, float]) -> dict[str, float]:
    """A trial's request in Ray's resource names (``cpu`` → CPU, ``gpu`` → GPU)."""
    names = {"cpu": "CPU", "gpu": "GPU"}
    return {names.get(k, k): float(v) for k, v in resources.items() if v}


def fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in request.items())


class ResourceWatch:
    """Watches, from the driver, whether any alive node could hold one trial."""

    def __init__(self, study: str, resources: dict[str, float], storage: Any):
        self.study = study
        self.request = ray_request(resources)
        self.storage = storage
        self.since: float | None = None  # when the wait began
        self.checked = 0.0
        self.failure: str | None = None

    def check(self, trials) -> str | None:
        """Every few seconds: None, or why the study must fail (it waited too long)."""
        now = time.monotonic()
        if self.failure is not None or now - self.checked < CHECK_EVERY_S:
            return self.failure
        self.checked = now
        waiting = any(t.status == "PENDING" for t in trials)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not waiting or any(fits(self.request, n) for n in nodes):
            if self.since is not None:
                log(f"resources are back after {now - self.since:.0f} s: the waiting trials "
                    "can run")
                self.since = None
                set_study_attr(self.storage, self.study, WAITING_ATTR, "")
            return None
        wanted = ", ".join(f"{k}={v:g}" for k, v in sorted(self.request.items()))
        if self.since is None:
            self.since = now
            message = (f"waiting for resources: no alive node of the {len(nodes)} left can "
                       f"hold a trial ({wanted}); waiting up to {resource_wait_s():.0f} s "
                       "for one to join")
            log(message)
            set_study_attr(self.storage, self.study, WAITING_ATTR, message)
        elif now - self.since > resource_wait_s():
            self.failure = (f"no alive node could hold a trial ({wanted}) for "
                            f"{resource_wait_s():.0f} s (CREDIT_RESOURCE_WAIT_S)")
            set_study_attr(self.storage, self.study, WAITING_ATTR, "")
        return self.failure
