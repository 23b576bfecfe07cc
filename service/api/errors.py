"""The study domain's errors; the app turns each into an HTTP status."""

from __future__ import annotations

from trainables.errors import CreditError

Loc = tuple[str | int, ...]


# ------------------------------------------------------------------------- errors
class StudyNotFound(CreditError):
    """No study with that id or name."""


class StudyRejected(CreditError):
    """The submitted study is invalid; ``problems`` are (field location, reason) pairs."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {r}" for loc, r in problems))


class NameTaken(CreditError):
    """A study of that name exists (here, or in the Optuna/MLflow stores)."""


class StudyStateConflict(CreditError):
    """The study is not in a state that allows the request (ended; nothing finished yet)."""


class TooManyStudies(CreditError):
    """The server already runs as many studies as it allows at once."""


class BackendUnavailable(CreditError):
    """The Ray cluster (or a store) did not answer; nothing was created."""
