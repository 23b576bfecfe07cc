"""The API against its own OpenAPI document: schemathesis generates requests for every
operation (bounded: 20 examples each, plus its coverage cases) and sends them over
loopback HTTP to a real ``credit serve`` with a valid token; no answer may be a
server error (5xx) or a body the document does not describe.

The server is a private one (its own home, at most 2 studies at once) on the session's
Ray cluster and MLflow server: a generated body that happens to be a valid study is
really submitted, and cancelled when the module ends."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.service.api.conftest import _api_env
from tests.service.api.helpers import TOKEN, ApiServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_api(ray_dashboard, mlflow_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-api-home")
    server = ApiServer(home, _api_env(home, ray_dashboard, mlflow_server,
                                      max_concurrent_studies="2", max_trials_per_study="2",
                                      max_body_bytes="16384"),
                       home / "serve.log").start()
    yield server
    with server.client() as c:  # whatever a generated body started
        for study in c.get("/studies", params={"limit": 200}).json()["data"]:
            if study["status"] in ("PENDING", "RUNNING"):
                c.post(f"/studies/{study['id']}/cancel")
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_api):
    return schemathesis.openapi.from_url(fuzz_api.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_described_and_none_is_a_server_error(case, fuzz_api):
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                           checks=[not_a_server_error, response_schema_conformance])
