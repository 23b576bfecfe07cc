"""``service.records.db``: the API's study records in a real sqlite database."""

from __future__ import annotations

import pytest

from service.records import db


@pytest.fixture()
def database(tmp_path):
    database = db.Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.create_all()
    yield database
    database.dispose()


def _record(study_id: str, name: str, status: str = db.PENDING) -> db.StudyRecord:
    return db.StudyRecord(id=study_id, name=name, status=status, spec={"name": name},
                          job_id=f"job-{study_id}", message="")


def test_create_get_by_id_and_name(database):
    with database.session() as s:
        db.create_study(s, _record("1", "a"))
    with database.session() as s:
        assert db.get_study(s, "1").name == "a"
        assert db.get_study_by_name(s, "a").id == "1"
        assert db.get_study(s, "2") is None and db.get_study_by_name(s, "b") is None


def test_a_name_is_stored_once(database):
    with database.session() as s:
        db.create_study(s, _record("1", "a"))
        with pytest.raises(db.NameTaken, match="'a'"):
            db.create_study(s, _record("2", "a"))
        assert db.list_studies(s)[1] == 1


def test_only_active_studies_are_updated_and_counted(database):
    with database.session() as s:
        db.create_study(s, _record("1", "a"))
        db.create_study(s, _record("2", "b", db.SUCCEEDED))
        assert db.count_active(s) == 1
        assert [r.id for r in db.active_studies(s)] == ["1"]
        assert db.update_active(s, "1", status=db.RUNNING, message="on")
        assert not db.update_active(s, "2", status=db.FAILED)
    with database.session() as s:
        assert db.get_study(s, "1").status == db.RUNNING
        assert db.get_study(s, "2").status == db.SUCCEEDED


def test_list_filters_pages_and_deletes(database):
    with database.session() as s:
        for i, status in enumerate((db.PENDING, db.FAILED, db.FAILED)):
            db.create_study(s, _record(str(i), f"s{i}", status))
        rows, count = db.list_studies(s, [db.FAILED], offset=0, limit=1)
        assert count == 2 and len(rows) == 1 and rows[0].status == db.FAILED
        db.delete_study(s, "0")
        assert db.list_studies(s)[1] == 2
    database.ping()
