"""The fair queue: a full server stores a study QUEUED with its place instead of refusing
it, and starts the oldest queued study of the owner with the fewest running studies when
a slot frees; the order survives an API SIGKILL and no study starts twice.

The order itself (``queue.fair_order``) is checked on rows; the rest over real HTTP
(``credit serve`` on loopback, the session's Ray cluster and MLflow server), where the
studies are long and each slot is freed by cancelling the study in it."""

from __future__ import annotations

import datetime as dt
import time
from types import SimpleNamespace

import pytest

from service.api import queue
from service.jobs import JobNotFound
from tests.service.api.helpers import ApiServer, api_env, wait_status

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _queued(*owners: str) -> list[SimpleNamespace]:
    """Queued rows in submission order, one a second, named OWNER-N."""
    seen: dict[str, int] = {}
    rows = []
    for i, owner in enumerate(owners):
        seen[owner] = seen.get(owner, 0) + 1
        rows.append(SimpleNamespace(id=f"{owner}-{seen[owner]}", owner=owner,
                                    created_at=T0 + dt.timedelta(seconds=i)))
    return rows


def _ids(order) -> list[str]:
    return [r.id for r in order]


def test_the_owner_with_fewest_running_goes_first_then_submission_order():
    queued = _queued("alice", "alice", "alice", "bob", "carol", "bob")
    # alice runs 2, bob 1, carol 0: carol first; then bob (1) before alice (2); then
    # alice and bob alternate by who runs fewer, ties to the older study
    order = queue.fair_order(queued, {"alice": 2, "bob": 1}, per_owner=10)
    assert _ids(order) == ["carol-1", "bob-1", "alice-1", "bob-2", "alice-2", "alice-3"]
    # nobody runs anything: submission order breaks every tie, owners interleave
    order = queue.fair_order(queued, {}, per_owner=10)
    assert _ids(order) == ["alice-1", "bob-1", "carol-1", "alice-2", "bob-2", "alice-3"]


def test_owners_at_their_own_limit_come_after_every_other_owner():
    queued = _queued("alice", "bob", "bob", "bob")
    order = queue.fair_order(queued, {"alice": 1}, per_owner=1)
    # alice is at her limit: bob's three go first although alice's study is the oldest
    assert _ids(order) == ["bob-1", "alice-1", "bob-2", "bob-3"]


def test_ties_go_to_the_owner_whose_last_start_is_oldest():
    # one slot: alice's study just ended (she started last), both run nothing now;
    # bob's study is younger, but alice must not take every slot by submitting first
    queued = _queued("alice", "alice", "bob", "bob")
    last = {"alice": T0 + dt.timedelta(hours=2), "bob": T0 + dt.timedelta(hours=1)}
    order = queue.fair_order(queued, {}, per_owner=10, last_start=last)
    assert _ids(order) == ["bob-1", "alice-1", "bob-2", "alice-2"]
    # an owner who never started one goes before both
    order = queue.fair_order(_queued("alice", "bob", "carol"), {}, 10, last)
    assert _ids(order) == ["carol-1", "bob-1", "alice-1"]


def test_an_empty_queue_has_no_order():
    assert queue.fair_order([], {"alice": 3}, per_owner=1) == []


# ---------------------------------------------------------------- over real HTTP
ALICE, BOB = "alice-token-queue-0123", "bob-token-queue-4567"
LONG = {"space": "mnist-fc-backprop", "max_trials": 50, "parallel_trials": 1,
        "epochs": 500, "dataset": "mnist-5k"}


@pytest.fixture()
def one_slot_api(ray_dashboard, mlflow_server, tmp_path):
    env = api_env(tmp_path, ray_dashboard, mlflow_server, max_concurrent_studies="1",
                  max_queued_per_owner="2")
    env["CREDIT_API_TOKENS"] = f"alice:{ALICE},bob:{BOB}"
    server = ApiServer(tmp_path, env, tmp_path / "serve.log").start()
    yield server
    server.stop()


def _positions(client) -> dict[str, int | None]:
    return {s["name"]: s["queue_position"] for s in client.get("/studies").json()["data"]
            if s["status"] == "QUEUED"}


@pytest.mark.slow
def test_a_full_server_queues_fairly_across_owners_and_a_sigkill(one_slot_api, ray_jobs):
    server = one_slot_api
    alice, bob = server.client(ALICE), server.client(BOB)
    ids: dict[str, str] = {}
    try:
        first = alice.post("/studies", json={"name": "q-a1", **LONG})
        assert first.status_code == 201 and first.json()["status"] == "PENDING", first.text
        ids["q-a1"] = first.json()["id"]
        for client, name in ((alice, "q-a2"), (alice, "q-a3"), (bob, "q-b1")):
            r = client.post("/studies", json={"name": name, **LONG})
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["status"] == "QUEUED" and body["queue_position"] >= 1
            assert "CREDIT_MAX_CONCURRENT_STUDIES" in body["message"]
            ids[name] = body["id"]
        # alice runs one, bob none: bob's study (submitted last) starts next
        assert _positions(alice) == {"q-a2": 2, "q-a3": 3}
        assert _positions(bob) == {"q-b1": 1}
        shown = bob.get(f"/studies/{ids['q-b1']}").json()
        assert shown["queue_position"] == 1 and shown["links"]["mlflow"] is None
        # alice's queue is full (2): the third is refused, naming the setting
        over = alice.post("/studies", json={"name": "q-a4", **LONG})
        assert over.status_code == 429, over.text
        assert "CREDIT_MAX_QUEUED_PER_OWNER=2" in over.json()["detail"][0]["msg"]
        for name in ("q-a2", "q-a3", "q-b1"):  # queued: no Ray job exists for them
            with pytest.raises(JobNotFound):
                ray_jobs.info(server.rows_by_name()[name][3])

        server.kill()  # SIGKILL: the queue is in the database
        server.start()
        assert _positions(alice) == {"q-a2": 2, "q-a3": 3}
        assert _positions(bob) == {"q-b1": 1}

        # a slot frees: bob's study starts, alice's move up
        freed = time.monotonic()
        r = alice.post(f"/studies/{ids['q-a1']}/cancel")
        assert r.status_code in (200, 202), r.text
        wait_status(bob, ids["q-b1"], ("PENDING", "RUNNING"), timeout_s=60)
        started_after = time.monotonic() - freed
        assert _positions(alice) == {"q-a2": 1, "q-a3": 2}

        # a queued study is cancelled at once and never starts
        r = alice.post(f"/studies/{ids['q-a3']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
        assert r.json()["queue_position"] is None

        r = bob.post(f"/studies/{ids['q-b1']}/cancel")
        assert r.status_code in (200, 202), r.text
        wait_status(alice, ids["q-a2"], ("PENDING", "RUNNING"), timeout_s=60)
        assert _positions(alice) == {}
        alice.post(f"/studies/{ids['q-a2']}/cancel")
        for name in ("q-a1", "q-b1", "q-a2"):
            wait_status(alice if "-a" in name else bob, ids[name], ("CANCELLED",),
                        timeout_s=120)

        # each started study had exactly one Ray job; the cancelled queued one none
        rows = server.rows_by_name()
        jobs = [j.submission_id for j in ray_jobs.list()]
        for name in ("q-a1", "q-b1", "q-a2"):
            assert jobs.count(rows[name][3]) == 1, name
        assert rows["q-a3"][3] not in jobs
        print(f"a freed slot to the next study PENDING/RUNNING: {started_after:.1f} s")
    finally:
        for name, study in ids.items():
            client = bob if name.startswith("q-b") else alice
            client.post(f"/studies/{study}/cancel")
        alice.close()
        bob.close()
