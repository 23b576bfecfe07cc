"""``/docs`` (Swagger UI) and ``/redoc`` from files installed with the project.

FastAPI's defaults load their JavaScript and CSS from a CDN: blank pages on a machine
without internet. The ``fastapi-offline`` package ships the same Swagger UI and ReDoc
bundles; they are served here under ``/docs/assets/`` (open, like the pages).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from service.api.docs_assets import ASSET_PREFIX, ASSETS

TITLE = "credit-search study service"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{TITLE} - Swagger UI",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=ASSET_PREFIX + "swagger-ui-bundle.js",
        swagger_css_url=ASSET_PREFIX + "swagger-ui.css",
        swagger_favicon_url=ASSET_PREFIX + "favicon.png")


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=f"{TITLE} - ReDoc",
                          redoc_js_url=ASSET_PREFIX + "redoc.standalone.js",
                          redoc_favicon_url=ASSET_PREFIX + "favicon.png",
                          with_google_fonts=False)


@router.get(ASSET_PREFIX + "{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no documentation asset {name!r}")
    path = files("fastapi_offline") / "static" / name
    return FileResponse(str(path), media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})
