"""The documentation pages' static files (Swagger UI, ReDoc): their names and paths,
shared by the docs routes that serve them and the auth that lets anyone fetch them."""

from __future__ import annotations

ASSET_PREFIX = "/docs/assets/"
#: File name → media type, as ``fastapi-offline`` ships them.
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
#: The paths anyone may fetch (part of ``config.OPEN_PATHS``).
ASSET_PATHS = tuple(ASSET_PREFIX + name for name in ASSETS)
