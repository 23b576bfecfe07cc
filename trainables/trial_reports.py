"""What a population trial tells Tune, torch-free: the key of its config that lists its
members and the key of its report that holds each member's state.

``trainables.tune`` writes them in the trial's process; a study's driver (its searcher,
monitor and results) reads them without importing the trainable, nor torch.
"""

from __future__ import annotations

import json
from typing import Any

#: The key of a population trial's config that lists its members ({"key", "params"}).
POPULATION_KEY = "population"
#: The key of a population's report that holds each member's state (a JSON string).
MEMBERS_KEY = "members"


def members_of(result: dict[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """Each member's ``{"state", "value", "epoch", "error"}`` from a population's report
    (None for the report of a lone trial)."""
    if not result or MEMBERS_KEY not in result:
        return None
    return json.loads(result[MEMBERS_KEY])
