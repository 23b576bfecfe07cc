"""The study service's records: one ``studies`` table, through SQLAlchemy 2.

A sqlite file under ``CREDIT_HOME`` by default; any SQLAlchemy URL works unchanged
(``postgresql+psycopg://...``). The functions here are plain CRUD on a ``Session``:
no HTTP, no Ray. ``name`` is UNIQUE, so of parallel submissions of one name exactly
one row is stored (the others get ``NameTaken``).

Updates made while a study runs (``update_active``) apply only while the row is
still PENDING or RUNNING: a status written by one writer (the sync loop, a cancel)
is never overwritten by another that read the row earlier.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from trainables.errors import CreditError

#: Study statuses. QUEUED: stored, waiting for a free slot (no Ray job yet); PENDING and
#: RUNNING hold a slot (a Ray job may be working): they are "active"; the rest have ended.
QUEUED, PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "QUEUED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ACTIVE = (PENDING, RUNNING)
UNENDED = (QUEUED, *ACTIVE)


class NameTaken(CreditError):
    """A study of that name is already stored."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class StudyRecord(Base):
    """One submitted study: its spec, its Ray job, where MLflow keeps it, its outcome."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the full StudySpec, as JSON
    job_id: Mapped[str | None] = mapped_column(String(128))
    experiment_id: Mapped[str | None] = mapped_column(String(64))
    parent_run_id: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # counts, best so far
    best_value: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # StudyResult.to_dict()
    message: Mapped[str] = mapped_column(Text, default="")
    #: the principal that submitted it ("" = an unnamed token: only admins and unnamed
    #: tokens see it); rows stored before owners existed get "" (``migrate``)
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    #: its trials as ``GET /studies/{id}/trials`` serves them, kept by the sync
    trials: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    #: records left to close once MLflow answers again: {"status", "reason"}
    pending_close: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: when its Ray job was submitted (None: queued, or taken from the queue and not yet
    #: submitted: the sync submits it then, under the same job id)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                    onupdate=utcnow)

    @property
    def active(self) -> bool:
        """Whether it has not ended yet (queued, or holding a slot)."""
        return self.status in UNENDED


class Database:
    """An engine and its session factory; ``create_all`` makes the table if missing."""

    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = _engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_all(self) -> None:
        """Make the table if missing, and add the columns a newer version has (``migrate``)."""
        Base.metadata.create_all(self.engine)
        migrate(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


#: Columns added since the first release, with the DDL that adds them to an old table.
_ADDED_COLUMNS = {
    "owner": "VARCHAR(64) NOT NULL DEFAULT ''",
    "trials": "JSON",
    "pending_close": "JSON",
    "started_at": "TIMESTAMP WITH TIME ZONE",
}
#: What a column added to rows stored before it existed holds (a study stored before the
#: queue was started when it was stored).
_BACKFILL = {"started_at": "UPDATE studies SET started_at = created_at"}


def migrate(engine: Engine) -> list[str]:
    """Add to an existing ``studies`` table the columns it lacks (rows are kept, the new
    columns take their defaults); the names of the columns added."""
    present = {c["name"] for c in inspect(engine).get_columns("studies")}
    added = []
    with engine.begin() as conn:
        for name, ddl in _ADDED_COLUMNS.items():
            if name not in present:
                conn.execute(text(f"ALTER TABLE studies ADD COLUMN {name} {ddl}"))
                if name in _BACKFILL:
                    conn.execute(text(_BACKFILL[name]))
                added.append(name)
    return added


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    # Several threads (request handlers, the sync loop) and processes (a restarted API)
    # share the file: wait for locks instead of failing, and let readers run beside
    # the one writer (WAL).
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


# ------------------------------------------------------------------------------ CRUD
def create_study(session: Session, record: StudyRecord) -> StudyRecord:
    """Store a new study; ``NameTaken`` if its name is stored already."""
    session.add(record)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise NameTaken(f"study name {record.name!r} is taken") from None
    return record


def get_study(session: Session, study_id: str) -> StudyRecord | None:
    return session.get(StudyRecord, study_id)


def get_study_by_name(session: Session, name: str) -> StudyRecord | None:
    return session.scalars(select(StudyRecord).where(StudyRecord.name == name)).first()


def list_studies(session: Session, statuses: Sequence[str] | None = None, offset: int = 0,
                 limit: int = 100, owner: str | None = None) -> tuple[list[StudyRecord], int]:
    """A page of studies, newest first, and how many match in all (only ``owner``'s
    when given)."""
    query = select(StudyRecord)
    counting = select(func.count()).select_from(StudyRecord)
    if owner is not None:
        query = query.where(StudyRecord.owner == owner)
        counting = counting.where(StudyRecord.owner == owner)
    if statuses:
        query = query.where(StudyRecord.status.in_(list(statuses)))
        counting = counting.where(StudyRecord.status.in_(list(statuses)))
    rows = session.scalars(query.order_by(StudyRecord.created_at.desc(), StudyRecord.id)
                           .offset(offset).limit(limit)).all()
    return list(rows), int(session.scalar(counting) or 0)


def count_active(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(StudyRecord)
                              .where(StudyRecord.status.in_(ACTIVE))) or 0)


def active_by_owner(session: Session) -> dict[str, int]:
    """How many studies each owner has PENDING or RUNNING (owners with none left out)."""
    rows = session.execute(select(StudyRecord.owner, func.count())
                           .where(StudyRecord.status.in_(ACTIVE))
                           .group_by(StudyRecord.owner)).all()
    return {owner or "": int(n) for owner, n in rows}


def last_start_by_owner(session: Session) -> dict[str, dt.datetime]:
    """When each owner's most recent study was started (owners never started left out)."""
    rows = session.execute(select(StudyRecord.owner, func.max(StudyRecord.started_at))
                           .where(StudyRecord.started_at.is_not(None))
                           .group_by(StudyRecord.owner)).all()
    return {owner or "": when for owner, when in rows if when is not None}


def owners(session: Session) -> set[str]:
    """Every named owner of a stored study."""
    return {o for o in session.scalars(select(StudyRecord.owner).distinct()).all() if o}


def count_queued(session: Session, owner: str | None = None) -> int:
    """QUEUED studies: ``owner``'s, or every owner's (None)."""
    query = select(func.count()).select_from(StudyRecord).where(StudyRecord.status == QUEUED)
    if owner is not None:
        query = query.where(StudyRecord.owner == owner)
    return int(session.scalar(query) or 0)


def queued_studies(session: Session) -> list[StudyRecord]:
    """Every QUEUED study, in submission order."""
    return list(session.scalars(select(StudyRecord).where(StudyRecord.status == QUEUED)
                                .order_by(StudyRecord.created_at, StudyRecord.id)).all())


def take_from_queue(session: Session, study_id: str) -> bool:
    """QUEUED → PENDING in one compare-and-set: whether this caller took it (of two
    callers, one does; a study is never started twice)."""
    result = session.execute(update(StudyRecord).where(StudyRecord.id == study_id,
                                                       StudyRecord.status == QUEUED)
                             .values(status=PENDING, message="", updated_at=utcnow()))
    session.commit()
    return bool(result.rowcount)


def update_queued(session: Session, study_id: str, **fields: Any) -> bool:
    """Update a study only while it is QUEUED; whether a row changed."""
    fields["updated_at"] = utcnow()
    result = session.execute(update(StudyRecord).where(StudyRecord.id == study_id,
                                                       StudyRecord.status == QUEUED)
                             .values(**fields))
    session.commit()
    return bool(result.rowcount)


def active_studies(session: Session) -> list[StudyRecord]:
    return list(session.scalars(select(StudyRecord).where(StudyRecord.status.in_(ACTIVE))
                                .order_by(StudyRecord.created_at)).all())


def pending_closes(session: Session) -> list[StudyRecord]:
    """Ended studies whose MLflow/Optuna records could not be closed yet."""
    return list(session.scalars(select(StudyRecord).where(
        StudyRecord.pending_close.is_not(None), StudyRecord.status.not_in(ACTIVE))).all())


def set_fields(session: Session, study_id: str, **fields: Any) -> None:
    """Update a study whatever its status (for what is not its status: caches, marks)."""
    session.execute(update(StudyRecord).where(StudyRecord.id == study_id).values(**fields))
    session.commit()


def update_active(session: Session, study_id: str, **fields: Any) -> bool:
    """Update a study only while it is PENDING or RUNNING; whether a row changed."""
    fields["updated_at"] = utcnow()
    result = session.execute(update(StudyRecord)
                             .where(StudyRecord.id == study_id,
                                    StudyRecord.status.in_(ACTIVE))
                             .values(**fields))
    session.commit()
    return bool(result.rowcount)


def delete_study(session: Session, study_id: str) -> None:
    record = session.get(StudyRecord, study_id)
    if record is not None:
        session.delete(record)
        session.commit()
