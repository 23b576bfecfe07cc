"""The service's own copy of each study's trials: one ``trials`` row per trial, kept by
the API's sync (``service.api.trial_sync``) and read a page at a time by
``GET /studies/{id}/trials``, the export and the page.

A row keeps the trial as the API serves it (``data``), and beside it the columns the
reads and the incremental sync filter on: its state, value, restarts, its MLflow run id
(found once, kept), and ``checked`` — whether MLflow answered for it after it had
finished (its run id and failure reason are then final). The rows not ``checked`` (the
unfinished trials and those MLflow has not answered for) are the only ones a sync reads
again; the next trial number to look for is one past the highest stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Index,
    Integer,
    String,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.records.db import Base

#: The states a trial is not finished in (ours: ``service.trials.TrialState`` values).
UNFINISHED_STATES = ("RUNNING", "PENDING")


class TrialRecord(Base):
    """One trial of a study, as the sync last read it from Optuna and MLflow."""

    __tablename__ = "trials"
    __table_args__ = (Index("ix_trials_study_checked", "study_id", "checked"),
                      Index("ix_trials_study_state", "study_id", "state", "value"),
                      Index("ix_trials_study_optuna", "study_id", "optuna_id"))

    study_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    trial_id: Mapped[str | None] = mapped_column(String(128))
    #: Optuna's own id of the trial (its primary key there)
    optuna_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    #: MLflow answered for the trial once it had finished: nothing about it changes again
    checked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: when its records last changed (its start or end), epoch seconds
    changed_at: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # the trial as the API serves it


@dataclass
class Cursor:
    """Where a study's incremental sync starts: the next trial number not stored yet,
    the highest Optuna id stored (None: no row has one) and the stored rows that may
    still change (unfinished, or not ``checked``)."""

    next_number: int = 0
    max_optuna_id: int | None = None
    open_rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # number → row


def row_of(trial: dict[str, Any], checked: bool, changed_at: float | None,
           optuna_id: int | None = None) -> dict[str, Any]:
    """The columns of a trial dict (``number``, ``trial_id``, ``state``, ``value``,
    ``restarts``, ``mlflow_run_id``) and the dict itself."""
    return {"number": trial["number"], "trial_id": trial.get("trial_id"),
            "optuna_id": optuna_id,
            "state": trial["state"], "value": trial.get("value"),
            "restarts": int(trial.get("restarts") or 0),
            "mlflow_run_id": trial.get("mlflow_run_id"), "checked": checked,
            "changed_at": changed_at, "data": trial}


def cursor(session: Session, study_id: str) -> Cursor:
    top = session.scalar(select(func.max(TrialRecord.number))
                         .where(TrialRecord.study_id == study_id))
    top_id = session.scalar(select(func.max(TrialRecord.optuna_id))
                            .where(TrialRecord.study_id == study_id))
    rows = session.scalars(select(TrialRecord).where(TrialRecord.study_id == study_id,
                                                     TrialRecord.checked.is_(False))).all()
    return Cursor(next_number=0 if top is None else top + 1, max_optuna_id=top_id,
                  open_rows={r.number: _as_row(r) for r in rows})


def _as_row(r: TrialRecord) -> dict[str, Any]:
    return {"number": r.number, "trial_id": r.trial_id, "optuna_id": r.optuna_id,
            "state": r.state, "value": r.value,
            "restarts": r.restarts, "mlflow_run_id": r.mlflow_run_id, "checked": r.checked,
            "changed_at": r.changed_at, "data": r.data}


def write(session: Session, study_id: str, rows: list[dict[str, Any]], new: set[int]) -> int:
    """Insert the rows numbered in ``new``, update the others (one transaction); a row not
    there to update is inserted, and one another writer inserted meanwhile is updated
    instead. How many rows were written."""
    for attempt in range(2):
        try:
            for row in rows:
                if row["number"] not in new:
                    values = {k: v for k, v in row.items() if k != "number"}
                    done = session.execute(update(TrialRecord).where(
                        TrialRecord.study_id == study_id,
                        TrialRecord.number == row["number"]).values(**values)).rowcount
                    if done:
                        continue
                session.add(TrialRecord(study_id=study_id, **row))
            session.commit()
            return len(rows)
        except IntegrityError:  # a concurrent sync stored some of them first
            session.rollback()
            if attempt:
                raise
            new = set()
    return 0


def has_rows(session: Session, study_id: str) -> bool:
    return session.scalar(select(TrialRecord.number).where(
        TrialRecord.study_id == study_id).limit(1)) is not None


def count(session: Session, study_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(TrialRecord)
                              .where(TrialRecord.study_id == study_id)) or 0)


def page(session: Session, study_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
    """Trials ``offset`` .. ``offset + limit`` by number."""
    return list(session.scalars(select(TrialRecord.data).where(TrialRecord.study_id == study_id)
                                .order_by(TrialRecord.number).offset(offset).limit(limit)))


def each(session: Session, study_id: str, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Every trial by number, ``chunk`` rows per query (keyed on the number, so the
    cost of a chunk does not grow with how far in it is)."""
    after = -1
    while True:
        rows = session.execute(select(TrialRecord.number, TrialRecord.data).where(
            TrialRecord.study_id == study_id, TrialRecord.number > after)
            .order_by(TrialRecord.number).limit(chunk)).all()
        for _, data in rows:
            yield data
        if len(rows) < chunk:
            return
        after = rows[-1][0]


def summary(session: Session, study_id: str, mode: str) -> dict[str, Any]:
    """Counts by state, restarts in all, the best COMPLETE trial (first by number among
    equals) and when the records last changed, from the stored rows."""
    by_state = session.execute(select(TrialRecord.state, func.count(),
                                      func.sum(TrialRecord.restarts), func.max(
                                          TrialRecord.changed_at))
                               .where(TrialRecord.study_id == study_id)
                               .group_by(TrialRecord.state)).all()
    order = TrialRecord.value.asc() if mode == "min" else TrialRecord.value.desc()
    best = session.scalar(select(TrialRecord.data).where(
        TrialRecord.study_id == study_id, TrialRecord.state == "COMPLETE",
        TrialRecord.value.is_not(None)).order_by(order, TrialRecord.number).limit(1))
    return {"counts": {state: n for state, n, _, _ in by_state},
            "restarts": int(sum(r or 0 for _, _, r, _ in by_state)),
            "changed_at": max((c for _, _, _, c in by_state if c is not None), default=None),
            "best": best}


def delete_trials(session: Session, study_id: str) -> None:
    session.execute(delete(TrialRecord).where(TrialRecord.study_id == study_id))
    session.commit()
