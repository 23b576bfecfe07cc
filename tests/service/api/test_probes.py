"""The probes (``/livez``, ``/readyz``, ``/healthz``) answer from a verdict the API keeps
fresh in the background, never by calling Ray or MLflow per request; and a request
with two ``Authorization`` headers is refused before anything else.

A real ``credit serve`` on loopback; Ray's dashboard and MLflow are one small HTTP
stand-in (``/api/version``, ``/health``) that counts its requests and can be switched
off (503), so the verdict's source and its freshness can be watched.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.service.api.helpers import TOKEN, free_port, start_bare_api

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Dependencies(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: StandIn = self.server  # type: ignore[assignment]
        path = self.path.split("?")[0]
        server.hits[path] += 1
        if not server.up:
            status, body = 503, {"error": "down"}
        elif path == "/api/version":
            status, body = 200, {"ray_version": "stand-in"}
        elif path == "/health":
            status, body = 200, "OK"
        else:
            status, body = 404, {}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


class StandIn(ThreadingHTTPServer):
    """Ray's dashboard and MLflow in one: up (200) or down (503)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", free_port()), _Dependencies)
        self.up = True
        self.hits: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def deps():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def api(deps, tmp_path_factory):
    server = start_bare_api(tmp_path_factory.mktemp("probes-home"),
                            ray_dashboard_url=deps.url, mlflow_tracking_uri=deps.url,
                            health_interval_s="1")
    yield server
    server.stop()


def _until_status(url: str, code: int, timeout_s: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url)
        if r.status_code == code or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_the_probes_need_no_token(api, deps):
    r = _until_status(api.url + "/readyz", 200)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    assert httpx.get(api.url + "/livez").json() == {"status": "ok"}
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    for path in ("/readyz", "/healthz"):  # with a token: each check and its detail
        body = httpx.get(api.url + path, headers=AUTH).json()
        assert set(body["checks"]) == {"database", "ray", "mlflow"}, body
        assert all(check["ok"] for check in body["checks"].values())
        assert "Ray stand-in" in body["checks"]["ray"]["detail"]
    doc = httpx.get(api.url + "/openapi.json").json()
    for path in ("/livez", "/readyz", "/healthz"):
        assert not doc["paths"][path]["get"].get("security"), path


def test_the_probes_answer_from_the_background_verdict(api, deps):
    _until_status(api.url + "/readyz", 200)
    before, start = deps.hits.copy(), time.monotonic()
    with httpx.Client(base_url=api.url) as c:
        for _ in range(20):
            for path in ("/healthz", "/readyz"):
                assert c.get(path).status_code == 200
                assert c.get(path, headers=AUTH).status_code == 200
    rounds = (time.monotonic() - start) / 1.0 + 2  # the background checks meanwhile
    for path in ("/health", "/api/version"):
        assert deps.hits[path] - before[path] <= rounds, (path, deps.hits, before)

    deps.up = False  # Ray and MLflow go down: the verdict follows within a round or two
    r = _until_status(api.url + "/readyz", 503)
    assert (r.status_code, r.json()) == (503, {"status": "degraded"})
    body = httpx.get(api.url + "/healthz", headers=AUTH).json()
    assert body["status"] == "degraded" and body["checks"]["database"]["ok"] is True
    assert not body["checks"]["ray"]["ok"] and not body["checks"]["mlflow"]["ok"]
    live = httpx.get(api.url + "/livez")  # the process itself is fine
    assert (live.status_code, live.json()) == (200, {"status": "ok"})

    deps.up = True
    assert _until_status(api.url + "/readyz", 200).status_code == 200
    assert httpx.get(api.url + "/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/studies", "/healthz", "/livez", "/search-spaces"])
@pytest.mark.parametrize("second", ["Bearer not-a-token", f"Bearer {TOKEN}"])
def test_two_authorization_headers_are_400(api, path, second):
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", second)]
    with httpx.Client(base_url=api.url) as c:
        r = c.get(path, headers=headers)
        assert r.status_code == 400, r.text
        (detail,) = r.json()["detail"]
        assert detail["loc"] == ["header", "Authorization"]
        assert "more than one Authorization header" in detail["msg"]
        assert detail["type"] == "value_error"
        # even before the credential-in-the-URL check
        assert c.get(path + "?token=x", headers=headers).status_code == 400
        assert c.get(path, headers=AUTH).status_code == 200  # one header: let in
