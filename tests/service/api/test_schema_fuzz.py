"""The API against its own OpenAPI document: schemathesis generates requests for every
operation, valid and invalid ones (bounded: 20 examples of each operation) and sends them over
loopback HTTP to a real ``credit serve`` with a valid token; no answer may be a
server error (5xx) or a body the document does not describe.

The document is built from the app at collection (schemathesis 4.32's fixture-based
loader breaks on pytest 9, which dropped ``Node._nodeid``); the served
``/openapi.json`` is checked to be that same document.

The server is a private one (its own home, at most 2 studies at once) on the session's
Ray cluster and MLflow server: a generated body that happens to be a valid study is
really submitted, and cancelled when the module ends."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from service.api import ApiSettings, create_app
from tests.service.api.helpers import TOKEN, start_api

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_api(ray_dashboard, mlflow_server, tmp_path_factory):
    server = start_api(tmp_path_factory, "fuzz-api-home", ray_dashboard, mlflow_server,
                       max_concurrent_studies="2", max_trials_per_study="2",
                       max_body_bytes="16384")
    yield server
    with server.client() as c:  # whatever a generated body started
        for study in c.get("/studies", params={"limit": 200}).json()["data"]:
            if study["status"] in ("PENDING", "RUNNING"):
                c.post(f"/studies/{study['id']}/cancel")
    server.stop()


def _document() -> dict:
    with tempfile.TemporaryDirectory() as home:
        return create_app(ApiSettings(
            home=home, api_tokens="t",
            mlflow_tracking_uri=f"sqlite:///{Path(home) / 'mlflow.db'}")).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
# valid requests and invalid ones (each must be a 4xx the document describes, not a 5xx)
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE,
                                       schemathesis.GenerationMode.NEGATIVE])


def test_the_server_serves_this_document(fuzz_api):
    assert httpx.get(fuzz_api.url + "/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_described_and_none_is_a_server_error(case, fuzz_api):
    case.call_and_validate(base_url=fuzz_api.url, timeout=60,
                           headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error, response_schema_conformance])
