"""What the driver does when a trial restarts after an infrastructure failure (its node
died, its storage or tracking store failed): it waits, bounded, until the stores answer
again, then counts the restart where users see it (the trial's Optuna attribute
``RESTARTS_ATTR`` and its MLflow run's tags) and logs how long the trial took to train
again and how many epochs it redid.

Tune restarts the trial itself (``FailureConfig(max_failures=max_trial_restarts)``), as
the same trial: the same Optuna trial and MLflow run, resumed from its last checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from service.records import study_runs, tags
from service.records import tracking as T
from service.records.optuna_trials import RESTARTS_ATTR, set_trial_attr, study_id_of
from service.records.tune_storage import tune_storage

#: How long a restart may wait for the storage, MLflow and Optuna to answer again
#: (``CREDIT_RESTART_WAIT_S``): a server restarting takes seconds to a minute.
RESTART_WAIT_ENV, RESTART_WAIT_S = "CREDIT_RESTART_WAIT_S", 300.0
PROBE_EVERY_S = 1.0


def restart_wait_s() -> float:
    return float(os.environ.get(RESTART_WAIT_ENV) or RESTART_WAIT_S)


def log(line: str) -> None:
    """A line of the study's log (the Ray job's log, or ``credit search``'s stderr)."""
    print(f"credit: {line}", file=sys.stderr, flush=True)


class Recovery:
    """The restarts of one study's trials, recorded and timed."""

    def __init__(self, study: str, tracking_uri: str, experiment_id: str, parent_id: str,
                 storage: Any):
        self.study = study
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.storage = storage

    # ------------------------------------------------------------------ the stores
    def store_problems(self) -> list[str]:
        """Which of the stores a restarted trial needs do not answer now (empty: none)."""
        problems = []
        checks = (("the checkpoint storage", self._probe_storage),
                  ("MLflow", lambda: T.client(self.tracking_uri).get_experiment(
                      self.experiment_id)),
                  ("the Optuna storage", lambda: study_id_of(self.storage, self.study)))
        for name, probe in checks:
            try:
                probe()
            except Exception as error:  # the store's own error: named, not raised
                problems.append(f"{name} ({' '.join(str(error).split())[:200]})")
        return problems

    @staticmethod
    def _probe_storage() -> None:
        fs, root = tune_storage().pyarrow_fs()
        fs.get_file_info(root)

    def wait_for_stores(self, trial_id: str) -> None:
        """Return once every store answers, or once ``restart_wait_s`` has passed (the
        restarted trial then fails again, and its failure says why)."""
        deadline = time.monotonic() + restart_wait_s()
        problems = self.store_problems()
        if not problems:
            return
        log(f"trial {trial_id}: waiting up to {restart_wait_s():.0f} s for "
            f"{', '.join(problems)} before it restarts")
        while problems and time.monotonic() < deadline:
            time.sleep(PROBE_EVERY_S)
            problems = self.store_problems()
        if problems:
            log(f"trial {trial_id}: still unavailable: {', '.join(problems)}")

    # ---------------------------------------------------------------- the records
    def restarted(self, trial_id: str, count: int, limit: int, reason: str) -> None:
        """Trial ``trial_id`` restarts for the ``count``-th time (of at most ``limit``)."""
        log(f"trial {trial_id}: restart {count} of {limit} from its last checkpoint after "
            f"{reason.splitlines()[0][:300] if reason else 'an infrastructure failure'}")
        try:
            set_trial_attr(self.storage, self.study, trial_id, RESTARTS_ATTR, count)
            study_runs.tag_trial_run(self.tracking_uri, self.experiment_id, self.parent_id,
                                     trial_id, {tags.RESTARTS: str(count)})
        except Exception as error:  # the count is for people; the restart goes on
            log(f"trial {trial_id}: its restart could not be recorded ({error})")

    def resumed(self, trial_id: str, seconds: float, epoch: int, last_epoch: int) -> None:
        """Trial ``trial_id`` reported again ``seconds`` after its failure was seen: epoch
        ``epoch`` (it had reported ``last_epoch`` before)."""
        redone = max(0, last_epoch - (epoch - 1))
        log(f"trial {trial_id}: training again {seconds:.1f} s after its failure was seen; "
            f"resumed at epoch {epoch} ({redone} epochs redone)")
        try:
            study_runs.tag_trial_run(self.tracking_uri, self.experiment_id, self.parent_id,
                                     trial_id, {tags.RESTART_DELAY: f"{seconds:.1f}",
                                                tags.EPOCHS_REDONE: str(redone)})
        except Exception as error:
            log(f"trial {trial_id}: its restart delay could not be recorded ({error})")
