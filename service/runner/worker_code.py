"""The code a study's driver hands Ray to run in other processes, named by import path.

A study's driver trains nothing, so it imports no torch (STYLE.md 13). Yet Tune needs a
trainable in the driver, and the pre-flight check runs a dataset's loader on each node:
both need torch where they run. They are named here as ``"<module>:<function>"``; a
``WorkerCode`` stands in for the function in the driver, travels to Ray's workers as its
name, and imports its module there, when it is first called (the way Ray Serve names
an application by its import path). The import-graph test (tests/test_structure.py)
reads these names as imports of this module.
"""

from __future__ import annotations

import pkgutil
from typing import Any

__all__ = ["LOAD_DATASET", "TRAIN_POPULATION", "TRAIN_TRIAL", "WorkerCode"]


class WorkerCode:
    """A function named ``"<module>:<function>"``, imported where it is called.

    It pickles as its name; ``__name__`` is the function's, which Tune names a trial's
    trainable after (and checks again when a study resumes). Slots: nothing (such as
    ``tune.with_resources``) can hang state on the shared instance.
    """

    __slots__ = ("__name__", "target")

    def __init__(self, target: str):
        module, _, name = target.partition(":")
        if not module or not name.isidentifier():
            raise ValueError(f"{target=} must be '<module>:<function>'")
        self.target = target
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return pkgutil.resolve_name(self.target)(*args, **kwargs)

    def __reduce__(self):
        return WorkerCode, (self.target,)

    def __repr__(self) -> str:
        return f"WorkerCode({self.target!r})"


#: Tune's function trainables: one configuration per trial, or a population of them;
#: each relays its trial to the node's warm trainer (``service.runner.relay``), and
#: takes its arguments packed (``relay.pack``).
TRAIN_TRIAL = WorkerCode("service.runner.relay:train_trial")
TRAIN_POPULATION = WorkerCode("service.runner.relay:train_population")
#: A dataset's loader (``trainables.data``), run on each node by the pre-flight check.
LOAD_DATASET = WorkerCode("trainables.data:load_dataset")
