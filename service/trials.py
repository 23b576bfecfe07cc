"""A trial's state and value, in one vocabulary: the states, how a trial's state is
derived, how a study counts them, and which of two values is better."""

from __future__ import annotations

import math
import re
from enum import StrEnum


class TrialState(StrEnum):
    """A trial's state as every part of the service names it (Optuna's FAIL is FAILED,
    its WAITING is PENDING)."""

    COMPLETE = "COMPLETE"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    PRUNED = "PRUNED"  # stopped early (ASHA)
    PENDING = "PENDING"

    @property
    def key(self) -> str:
        """Its key in a study's counts (``{"complete": 3, ...}``)."""
        return self.value.lower()


#: The keys of a study's counts, in order.
COUNT_KEYS = tuple(s.key for s in TrialState)


def trial_state(epochs_done: int, epochs: int, *, failed: bool = False,
                running: bool = False, ended: bool = False) -> TrialState:
    """The state of a trial that ran ``epochs_done`` of ``epochs``: FAILED if it failed,
    RUNNING while it runs, COMPLETE once it ran every epoch, PRUNED if it stopped before
    (or ``ended`` without finishing), else PENDING (it never started)."""
    if failed:
        return TrialState.FAILED
    if running:
        return TrialState.RUNNING
    if epochs_done >= epochs:
        return TrialState.COMPLETE
    if epochs_done > 0 or ended:
        return TrialState.PRUNED
    return TrialState.PENDING


def empty_counts() -> dict[str, int]:
    """Every state's count at zero."""
    return dict.fromkeys(COUNT_KEYS, 0)


def count(states) -> dict[str, int]:
    """How many of ``states`` are in each state."""
    counts = empty_counts()
    for state in states:
        counts[TrialState(state).key] += 1
    return counts


def is_finite(value) -> bool:
    """Whether ``value`` is a finite number (None, NaN, inf and non-numbers are not)."""
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(value)
    except TypeError:
        return False


def better(value: float, than: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``than`` (None: nothing yet) for objective ``mode``
    (``min`` or ``max``); a missing or non-finite value never does."""
    if not is_finite(value):
        return False
    if than is None:
        return True
    return value < than if mode == "min" else value > than


# ------------------------------------------------------------------ populations
#: The Optuna user attribute of a population's member: its Tune trial's id.
POPULATION_ATTR = "credit.population"
_MEMBER = re.compile(r"^(?P<trial>.+)-m(?P<index>\d+)$")


def member_id(trial_id: str, index: int) -> str:
    """The trial id of member ``index`` of the population that Tune trial ``trial_id``
    trains: its id in Optuna, in MLflow and in the API."""
    return f"{trial_id}-m{index}"


def ray_trial_of(trial_id: str) -> str:
    """The Tune trial that trains ``trial_id``: itself, or its population's."""
    match = _MEMBER.match(trial_id)
    return match["trial"] if match else trial_id


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """Whether values ``a`` Pareto-dominate ``b`` (objective modes ``min``/``max``): no
    worse in every objective and better in one."""
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    no_worse = all(s * x <= s * y for s, x, y in zip(signs, a, b, strict=True))
    return no_worse and any(s * x < s * y for s, x, y in zip(signs, a, b, strict=True))


def pareto_front(points: list[list[float]], modes: list[str]) -> list[int]:
    """The indices of ``points`` no other point dominates (the Pareto front), in order;
    of points with equal values, each is kept."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]
