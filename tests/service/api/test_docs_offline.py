"""``/docs`` and ``/redoc`` work without internet: their scripts and styles come from
the server itself, and Swagger UI really renders the operations in a headless browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.local.stack import stop_session, wait_http
from tests.service.api.browser import dump_dom
from tests.service.api.helpers import TOKEN, free_port


@pytest.fixture(scope="module")
def bare_api(tmp_path_factory):
    """``credit serve`` with no cluster behind it: enough for pages and docs."""
    home = tmp_path_factory.mktemp("docs-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    env.update({"CREDIT_HOME": str(home), "CREDIT_API_TOKENS": TOKEN,
                "CREDIT_RAY_DASHBOARD_URL": f"http://127.0.0.1:{free_port()}",
                "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    with open(home / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port",
                                 str(port), "--log-level", "warning"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/openapi.json", 120, alive=lambda: proc.poll() is None)
        yield url
    finally:
        stop_session(proc.pid)
        proc.wait()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_elsewhere(bare_api: str, page: str) -> None:
    html = httpx.get(bare_api + page).text
    sources = re.findall(r'(?:src|href)\s*[=:]\s*["\']([^"\']+)["\']', html)
    assert sources, html
    assert not [s for s in sources if re.match(r"^(https?:)?//", s)], sources
    for source in sources:  # every asset is there, without a token
        if source.startswith("/docs/assets/"):
            r = httpx.get(bare_api + source)
            assert r.status_code == 200 and len(r.content) > 1000, source
    assert httpx.get(bare_api + "/docs/assets/nope.js").status_code in (401, 404)


def test_swagger_ui_renders_the_operations_offline(bare_api: str) -> None:
    """Chromium with background networking off: the page can only use this server."""
    dom = dump_dom(bare_api + "/docs")
    assert 'class="swagger-ui' in dom
    blocks = re.findall(r'class="opblock opblock-(get|post|delete|put)', dom)
    assert len(blocks) >= 5, dom[:3000]
    assert 'data-path="/studies/{study}"' in dom and "Submit Study" in dom


def test_redoc_renders_offline(bare_api: str) -> None:
    dom = dump_dom(bare_api + "/redoc")
    assert "redoc-wrap" in dom or "api-content" in dom, dom[:3000]
    assert "credit-search study service" in dom
