"""Malformed and abusive requests: each answered 4xx with the field and the reason, and
none leaves a study row or a Ray job behind."""

from __future__ import annotations

import json

import pytest

from tests.service.api.helpers import TOKEN

OK = {"name": "bad-input", "space": "mnist-fc-backprop", "epochs": 1, "dataset": "mnist-5k"}


def inline(**change) -> dict:
    space = {"name": "inline", "experiment": "mnist-fc", "rule": "backprop",
             "params": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}}
    space.update(change)
    return space


# (body changes, status, the location the answer must name, a word of the reason)
BAD_BODIES = {
    "name missing": ({"name": None}, 422, ["body", "name"], "missing"),
    "space missing": ({"space": None}, 422, ["body", "space"], "missing"),
    "trials not a number": ({"max_trials": "many"}, 422, ["body", "max_trials"], "integer"),
    "trials a float": ({"max_trials": 2.5}, 422, ["body", "max_trials"], "integer"),
    "trials a boolean": ({"max_trials": True}, 422, ["body", "max_trials"], "integer"),
    "epochs a string": ({"epochs": "1"}, 422, ["body", "epochs"], "integer"),
    "seed a float": ({"seed": 1.0}, 422, ["body", "seed"], "integer"),
    "early stopping a string": ({"early_stopping": "yes"}, 422, ["body", "early_stopping"],
                                "boolean"),
    "cpus a string": ({"resources": {"cpu": "2"}}, 422, ["body", "resources", "cpu"],
                      "number"),
    "negative trials": ({"max_trials": -1}, 422, ["body", "max_trials"], ">= 1"),
    "huge trials": ({"max_trials": 10**9}, 422, ["body", "max_trials"], "<= 10000"),
    "over the server's trial limit": ({"max_trials": 51}, 422, ["body", "max_trials"],
                                      "limit"),
    "zero parallel trials": ({"parallel_trials": 0}, 422, ["body", "parallel_trials"], ">= 1"),
    "negative seed": ({"seed": -5}, 422, ["body", "seed"], ">= 0"),
    "huge epochs": ({"epochs": 10**12}, 422, ["body", "epochs"], "<="),
    "zero batches per epoch": ({"batches_per_epoch": 0}, 422, ["body", "batches_per_epoch"],
                               ">= 1"),
    "negative failed-trial budget": ({"max_failed_trials": -1}, 422,
                                     ["body", "max_failed_trials"], ">= 0"),
    "negative restart budget": ({"max_trial_restarts": -1}, 422,
                                ["body", "max_trial_restarts"], ">= 0"),
    "restart budget a string": ({"max_trial_restarts": "3"}, 422,
                                ["body", "max_trial_restarts"], "integer"),
    "too many final seeds": ({"final_seeds": 1000}, 422, ["body", "final_seeds"], "<= 100"),
    "unknown sampler": ({"sampler": "grid"}, 422, ["body", "sampler"], "random"),
    "unknown preset": ({"space": "no-such-preset"}, 422, ["body", "space"], "unknown preset"),
    "space as a path": ({"space": "../../etc/passwd"}, 422, ["body", "space"], "files"),
    "space as a json file": ({"space": "/tmp/space.json"}, 422, ["body", "space"], "files"),
    "space a number": ({"space": 7}, 422, ["body", "space"], "preset name"),
    "path-like name": ({"name": "../etc"}, 422, ["body", "name"], "pattern"),
    "name with a slash": ({"name": "a/b"}, 422, ["body", "name"], "pattern"),
    "upper-case name": ({"name": "Upper Case"}, 422, ["body", "name"], "pattern"),
    "overlong name": ({"name": "a" * 65}, 422, ["body", "name"], "64"),
    "inverted range": ({"space": inline(params={"lr": {"type": "float", "low": 0.1,
                                                       "high": 0.01}})},
                       422, ["body", "space", "params", "lr"], "low must be < high"),
    "equal bounds": ({"space": inline(params={"lr": {"type": "float", "low": 0.1,
                                                     "high": 0.1}})},
                     422, ["body", "space", "params", "lr"], "low must be < high"),
    "unknown rule": ({"space": inline(rule="backprop2")}, 422, ["body", "space", "rule"],
                     "unknown rule"),
    "unknown experiment": ({"space": inline(experiment="imagenet-resnet")}, 422,
                           ["body", "space", "experiment"], "unknown experiment"),
    "unknown parameter": ({"space": inline(params={"colour": {"type": "int", "low": 1,
                                                              "high": 3}})},
                          422, ["body", "space", "params", "colour"], "unknown"),
    "unknown dataset": ({"dataset": "imagenet"}, 422, ["body", "dataset"], "unknown dataset"),
    "unknown init": ({"space": inline(fixed={"init": "xavier"})}, 422,
                     ["body", "space", "fixed", "init"], "authors"),
    "width of mnist-fc": ({"space": inline(fixed={"hidden_width": 30})}, 422,
                          ["body", "space", "fixed", "hidden_width"], "mnist-autoencoder"),
    "unknown loss reduction": ({"space": inline(fixed={"loss_reduction": "max"})}, 422,
                               ["body", "space", "fixed", "loss_reduction"], "sum"),
    "dataset of another experiment": ({"dataset": "cifar10"}, 422, ["body", "dataset"],
                                      "cifar10"),
    "a GPU the cluster lacks": ({"resources": {"gpu": 1}}, 422, ["body", "resources", "gpu"],
                                "no GPU"),
    "more CPUs than a node has": ({"resources": {"cpu": 64}}, 422,
                                  ["body", "resources", "cpu"], "CPU"),
    "negative CPUs": ({"resources": {"cpu": -1}}, 422, ["body", "resources", "cpu"], "> 0"),
    # a trial asking for -1 of a custom resource was never placed: the study hung
    "negative custom resource": ({"resources": {"custom": {"worker_host": -1}}}, 422,
                                 ["body", "resources", "custom", "worker_host"], "> 0"),
    "zero custom resource": ({"resources": {"custom": {"worker_host": 0}}}, 422,
                             ["body", "resources", "custom", "worker_host"], "> 0"),
    "unknown metric": ({"objective": {"metric": "accuracy"}}, 422,
                       ["body", "objective", "metric"], "unknown metric"),
    "unknown mode": ({"objective": {"metric": "test_error", "mode": "best"}}, 422,
                     ["body", "objective", "mode"], "min"),
    "bad early stopping": ({"early_stopping": {"grace_period": 0}}, 422,
                           ["body", "early_stopping"], ">= 1"),
    "server path: tracking_uri": ({"tracking_uri": "file:///tmp/x"}, 422,
                                  ["body", "tracking_uri"], "unknown"),
    "server path: data_dir": ({"data_dir": "/etc"}, 422, ["body", "data_dir"], "unknown"),
    "server path: storage": ({"storage": "sqlite:////tmp/o.db"}, 422, ["body", "storage"],
                             "unknown"),
}


def _body(change: dict) -> dict:
    body = dict(OK)
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _ids(rows: list[tuple]) -> set[tuple]:
    return {(r[0], r[1], r[3]) for r in rows}  # id, name, job id (not the status)


def _names(detail: list[dict]) -> list[list]:
    return [d["loc"] for d in detail]


@pytest.fixture(scope="module")
def nothing_created(queue_api, ray_jobs):
    """Asserts, after each request, that no row and no Ray job appeared."""
    def check():
        assert _ids(queue_api.rows()) == rows, "a rejected request left a study row"
        assert {j.submission_id for j in ray_jobs.list()} == jobs, "…or a Ray job"

    rows = _ids(queue_api.rows())
    jobs = {j.submission_id for j in ray_jobs.list()}
    return check


@pytest.mark.parametrize("change, status, loc, reason", BAD_BODIES.values(), ids=BAD_BODIES)
def test_bad_study_is_rejected_naming_the_field(queue_api, nothing_created, change, status,
                                                loc, reason):
    with queue_api.client() as c:
        r = c.post("/studies", json=_body(change))
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    matching = [d for d in detail if d["loc"][:len(loc)] == loc]
    assert matching, f"{loc} not in {_names(detail)}"
    assert any(reason in d["msg"] for d in matching), detail
    nothing_created()


RAW_BODIES = {
    "not JSON": (b"{name: oops", ["body"]),
    "a JSON array": (b"[1, 2, 3]", ["body"]),
    "NaN": (b'{"name": "nan", "space": "mnist-fc-backprop", "resources": {"cpu": NaN}}',
            ["body", "resources", "cpu"]),
    "empty": (b"", ["body"]),
}


@pytest.mark.parametrize("raw, loc", RAW_BODIES.values(), ids=RAW_BODIES)
def test_unparseable_body_is_422(queue_api, nothing_created, raw, loc):
    with queue_api.client() as c:
        r = c.post("/studies", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(d["loc"][:len(loc)] == loc for d in r.json()["detail"]), r.json()
    nothing_created()


_STUDY = json.dumps({"name": "encoded", "space": "mnist-fc-backprop", "epochs": 1})
# (raw body, a word of the reason): each refused 400 naming the body, never guessed at
NOT_UTF8 = {
    "UTF-16 with a byte-order mark": (_STUDY.encode("utf-16"), "byte-order mark"),
    "UTF-16 without one": (_STUDY.encode("utf-16-le"), "UTF-16"),
    "UTF-16 big-endian without one": (_STUDY.encode("utf-16-be"), "UTF-16"),
    "UTF-32": (_STUDY.encode("utf-32"), "byte-order mark"),
    "UTF-8 with a byte-order mark": (_STUDY.encode("utf-8-sig"), "byte-order mark"),
    "Latin-1": (_STUDY.replace("encoded", "enc\u00f6ded").encode("latin-1"), "not UTF-8"),
    "invalid bytes": (b'{"name": "\xff\xfe", "space": "mnist-fc-backprop"}', "not UTF-8"),
}


@pytest.mark.parametrize("raw, reason", NOT_UTF8.values(), ids=NOT_UTF8)
def test_body_that_is_not_utf8_is_400_naming_the_body(queue_api, nothing_created, raw, reason):
    with queue_api.client() as c:
        r = c.post("/studies", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body"] and "UTF-8" in detail["msg"] and reason in detail["msg"]
    nothing_created()


def test_utf8_that_is_not_ascii_reaches_validation(queue_api, nothing_created):
    """The control: real UTF-8 passes the encoding check; the name is then refused."""
    with queue_api.client() as c:
        r = c.post("/studies", content=_STUDY.replace("encoded", "enc\u00f6ded").encode(),
                   headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "name"]
    nothing_created()


@pytest.mark.parametrize("depth", [33, 4000])  # 4000: past json's recursion limit
def test_deeply_nested_body_is_400_naming_the_body(queue_api, nothing_created, depth):
    deep = '{"name": "deep", "space": "mnist-fc-backprop", "resources": ' + \
        "[" * depth + "]" * depth + "}"
    with queue_api.client() as c:
        r = c.post("/studies", content=deep.encode(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body"] and "deeper than 32" in detail["msg"]
    nothing_created()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=utf-16"])
def test_body_that_is_not_json_by_its_type_is_415(queue_api, nothing_created, content_type):
    with queue_api.client() as c:
        r = c.post("/studies", content=_STUDY.encode(), headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["header", "Content-Type"]
    assert content_type.split(";")[-1].strip().split("=")[-1] in detail["msg"]
    nothing_created()


def test_oversized_body_is_413(queue_api, nothing_created):
    big = _body({"space": inline(description="x" * 20_000)})
    with queue_api.client() as c:
        r = c.post("/studies", json=big)
    assert r.status_code == 413
    assert r.json()["detail"][0]["loc"] == ["body"]
    assert "8192 bytes" in r.json()["detail"][0]["msg"]
    nothing_created()


def test_oversized_chunked_body_is_413(queue_api, nothing_created):
    """No Content-Length: the limit is enforced on the stream itself."""
    payload = json.dumps(_body({"space": inline(description="y" * 20_000)})).encode()

    def chunks():
        for i in range(0, len(payload), 1000):
            yield payload[i:i + 1000]

    with queue_api.client() as c:
        r = c.post("/studies", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["detail"][0]["loc"] == ["body"]
    nothing_created()


def test_lying_content_length_is_rejected(queue_api, nothing_created):
    """A Content-Length over the limit is refused before a byte of the body is read."""
    import socket

    request = (f"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}"
               "\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{}")
    answer = b""
    with socket.create_connection(("127.0.0.1", queue_api.port), timeout=10) as s:
        s.sendall(request.encode())
        while b"}]}" not in answer:  # until the end of the JSON body (or the server closes)
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"loc": ["body"]' in answer
    nothing_created()


BAD_QUERIES = {
    "limit 0": ("/studies?limit=0", ["query", "limit"]),
    "huge limit": ("/studies?limit=100000", ["query", "limit"]),
    "negative offset": ("/studies?offset=-1", ["query", "offset"]),
    "unknown status": ("/studies?status=DONE", ["query", "status"]),
    "path-like study": ("/studies/..%2F..%2Fetc%2Fpasswd", ["path"]),
    "overlong study": ("/studies/" + "x" * 200, ["path", "study"]),
    "path-like space": ("/search-spaces/..%2Fpresets%2Fmnist-fc-backprop", ["path"]),
    "unknown space": ("/search-spaces/no-such-space", ["path", "name"]),
}


@pytest.mark.parametrize("path, loc", BAD_QUERIES.values(), ids=BAD_QUERIES)
def test_bad_path_or_query_is_4xx_naming_it(queue_api, path, loc):
    with queue_api.client() as c:
        r = c.get(path)
    assert 400 <= r.status_code < 500, r.text
    assert any(d["loc"][:len(loc)] == loc for d in r.json()["detail"]), r.json()
    assert all(d["msg"] for d in r.json()["detail"])
    assert "root:" not in r.text and "backprop" not in r.json()["detail"][0]["msg"][:10]
