"""The app as a whole: bearer tokens, open paths, health, the catalogue, the OpenAPI
document — over HTTP against ``credit serve``."""

from __future__ import annotations

import subprocess
import sys

import httpx
import jsonschema
import pytest

from search_spaces import load_space, preset_names
from service.api import ApiSettings, create_app
from tests.service.api.helpers import OTHER_TOKEN, TOKEN

PROTECTED = [("GET", "/studies"), ("POST", "/studies"), ("GET", "/studies/x"),
             ("GET", "/studies/x/trials"), ("GET", "/studies/x/best"),
             ("POST", "/studies/x/cancel"), ("GET", "/search-spaces"),
             ("GET", "/search-spaces/mnist-fc-backprop"), ("GET", "/experiments")]


@pytest.mark.parametrize("method, path", PROTECTED)
def test_no_token_is_401_and_a_wrong_one_403(queue_api, method, path):
    with httpx.Client(base_url=queue_api.url) as c:
        r = c.request(method, path)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["detail"][0]["loc"] == ["header", "Authorization"]
        r = c.request(method, path, headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 403
        assert r.json()["detail"][0]["loc"] == ["header", "Authorization"]


def test_page_fragments_need_the_token(queue_api):
    with httpx.Client(base_url=queue_api.url) as c:
        assert c.get("/pages/studies").status_code == 401
        r = c.get("/pages/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and 'id="studies"' in r.text


def test_the_token_lets_in(queue_api):
    with httpx.Client(base_url=queue_api.url) as c:
        for token in (TOKEN, OTHER_TOKEN):
            r = c.get("/studies", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            assert set(r.json()) == {"data", "count"}


@pytest.mark.parametrize("header", ["Basic dGVzdDp0ZXN0", f"Token {TOKEN}", "Bearer", "bearer",
                                    TOKEN])
def test_anything_but_a_bearer_token_is_401(queue_api, header):
    with httpx.Client(base_url=queue_api.url) as c:
        assert c.get("/studies", headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize("path", ["/studies?token=" + TOKEN, "/healthz?access_token=x",
                                  "/studies?limit=2&API_KEY=x"])
def test_a_credential_in_the_query_string_is_401(queue_api, path):
    with queue_api.client() as c:  # with a valid header too: the URL is what gets logged
        r = c.get(path)
    assert r.status_code == 401
    (detail,) = r.json()["detail"]
    assert detail["loc"][0] == "query" and detail["loc"][1].lower() in path.lower()
    assert "Authorization header" in detail["msg"] and TOKEN not in r.text


def test_the_access_log_never_shows_a_credential():
    import logging

    from service.api.redaction import RedactCredentials

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/studies?limit=2&token={TOKEN}", "1.1", 401), None)
    assert RedactCredentials().filter(record)
    assert TOKEN not in record.getMessage()
    assert "/studies?limit=2&token=*** HTTP/1.1" in record.getMessage()


def test_a_rejected_token_learns_nothing_from_validation(queue_api):
    """Auth runs before the body is read: a bad body without a token is 401, not 422."""
    with httpx.Client(base_url=queue_api.url) as c:
        r = c.post("/studies", content=b"{not json")
        assert r.status_code == 401
        r = c.post("/studies", content=b"x" * 100_000)
        assert r.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/docs", "/openapi.json",
                                  "/redoc", "/", "/docs/assets/swagger-ui-bundle.js"])
def test_health_and_docs_need_no_token(queue_api, path):
    assert httpx.get(queue_api.url + path).status_code == 200


def test_healthz_reports_database_ray_and_mlflow(queue_api, mlflow_server):
    r = httpx.get(queue_api.url + "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok"
    assert set(body["checks"]) == {"database", "ray", "mlflow"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "Ray 2.60.0" in body["checks"]["ray"]["detail"]
    assert body["mlflow_ui_url"] == mlflow_server


def test_healthz_without_a_token_says_only_ok(queue_api, mlflow_server):
    """A probe learns the verdict, not where the database, Ray or MLflow live."""
    r = httpx.get(queue_api.url + "/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    for secret in ("sqlite", str(queue_api.home), mlflow_server, "127.0.0.1", "Ray"):
        assert secret not in r.text
    # a proxy's credential of another scheme is not ours: still the verdict alone
    r = httpx.get(queue_api.url + "/healthz", headers={"Authorization": "Basic dTpw"})
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    # a bearer token that is sent must be valid, even here
    r = httpx.get(queue_api.url + "/healthz", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 403
    assert r.json()["detail"][0]["loc"] == ["header", "Authorization"]


def test_healthz_is_503_when_ray_is_unreachable(tmp_path):
    import asyncio

    settings = ApiSettings(home=tmp_path, api_tokens="t", ray_dashboard_url="http://127.0.0.1:9",
                           mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")

    async def get(headers):
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/healthz", headers=headers)

    r = asyncio.run(get({"Authorization": "Bearer t"}))
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["ray"]["ok"] is False and body["checks"]["database"]["ok"] is True
    assert "127.0.0.1:9" in body["checks"]["ray"]["detail"]
    r = asyncio.run(get({}))
    assert (r.status_code, r.json()) == (503, {"status": "degraded"})


# (method, path, every method the path answers, as Allow must list them)
ALLOW = {
    "OPTIONS /studies": ("OPTIONS", "/studies", "GET, POST, OPTIONS"),
    "DELETE /studies": ("DELETE", "/studies", "GET, POST, OPTIONS"),
    "PUT /studies/x": ("PUT", "/studies/x", "GET, OPTIONS"),
    "GET /studies/x/cancel": ("GET", "/studies/x/cancel", "POST, OPTIONS"),
    "POST /studies/x/trials": ("POST", "/studies/x/trials", "GET, OPTIONS"),
    "POST /search-spaces": ("POST", "/search-spaces", "GET, OPTIONS"),
}


@pytest.mark.parametrize("method, path, allow", ALLOW.values(), ids=ALLOW)
def test_allow_lists_every_method_of_the_path(queue_api, method, path, allow):
    with queue_api.client() as c:
        r = c.request(method, path)
    assert r.headers["Allow"] == allow
    if method == "OPTIONS":
        assert r.status_code == 204 and r.content == b""
    else:
        assert r.status_code == 405
        assert r.json()["detail"][0]["loc"] == ["path"]
        assert f"{method} {path}" in r.json()["detail"][0]["msg"]


def test_search_spaces_and_experiments(queue_api):
    with queue_api.client() as c:
        spaces = c.get("/search-spaces").json()
        assert spaces["count"] == len(preset_names()) == len(spaces["data"])
        assert {s["name"] for s in spaces["data"]} == set(preset_names())
        one = c.get("/search-spaces/mnist-fc-node-perturbation").json()
        assert one == load_space("mnist-fc-node-perturbation").model_dump(mode="json")
        assert set(one["params"]) == {"lr", "noise_std", "feedback_lr"}
        catalog = c.get("/experiments").json()
    assert {"mnist-fc", "mnist-autoencoder", "cifar10-cnn"} <= \
        {e["name"] for e in catalog["experiments"]}
    assert "node_perturbation" in {r["name"] for r in catalog["rules"]}
    assert all(r["description"] for r in catalog["rules"])
    assert "mnist-5k" in {d["name"] for d in catalog["datasets"]}


def test_a_space_from_the_catalogue_is_accepted_inline(queue_api):
    with queue_api.client() as c:
        space = c.get("/search-spaces/mnist-fc-feedback-alignment").json()
        r = c.post("/studies", json={"name": "inline-space", "space": space, "epochs": 1,
                                     "dataset": "mnist-5k", "max_trials": 1})
        assert r.status_code == 201, r.text
        assert r.json()["space"] == "mnist-fc-feedback-alignment"
        assert c.post(f"/studies/{r.json()['id']}/cancel").json()["status"] == "CANCELLED"


# ------------------------------------------------------------------------- OpenAPI
PROBES = ("/healthz", "/livez", "/readyz")
ROUTES = {("get", "/healthz"), ("get", "/livez"), ("get", "/readyz"), ("post", "/studies"),
          ("get", "/studies"),
          ("get", "/studies/{study}"), ("get", "/studies/{study}/trials"),
          ("get", "/studies/{study}/best"), ("get", "/studies/{study}/pareto"),
          ("get", "/studies/{study}/pareto.png"), ("post", "/studies/{study}/cancel"),
          ("get", "/studies/{study}/report"), ("get", "/studies/{study}/report/{figure}"),
          ("get", "/search-spaces"), ("get", "/search-spaces/{name}"), ("get", "/experiments"),
          ("get", "/studies/{study}/export")}


def _refs(node, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value)
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)
    return found


def test_openapi_document_is_valid_and_lists_every_route(queue_api):
    doc = httpx.get(queue_api.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    listed = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == ROUTES
    # every route the app serves is documented
    from service.api.routes import catalog, export, health, studies

    served = {(m.lower(), r.path) for router in (catalog.router, health.router, studies.router,
                                                 export.router)
              for r in router.routes for m in r.methods}
    assert served == ROUTES
    # operations: unique ids, responses, and the bearer scheme on all but the probes
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["responses"], (path, op)
            secured = any("HTTPBearer" in s for s in op.get("security", []))
            assert secured == (path not in PROBES), path
    # every schema is a valid JSON Schema, and every $ref resolves
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for ref in _refs(doc, set()):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    body = doc["paths"]["/studies"]["post"]["requestBody"]["content"]["application/json"]
    create = doc["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert create["required"] == ["name", "space"]
    assert not {"tracking_uri", "storage", "data_dir"} & set(create["properties"])
    assert create["additionalProperties"] is False


def test_the_api_imports_no_torch():
    """The HTTP service trains nothing: its app, ``credit serve`` and the dashboard gate
    import no torch (the catalogue it serves is ``trainables.catalog``'s)."""
    code = ("import sys, service.api.app, service.commands.actions.serve, "
            "service.api.dashboard_gate\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'trainables.trainer', "
            "'trainables.data', 'trainables.rules') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
