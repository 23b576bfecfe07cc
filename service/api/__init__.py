"""The HTTP study service (FastAPI): ``create_app(settings)`` and its settings.

Layout, after the full-stack-fastapi-template: ``config`` (one pydantic-settings
object), ``schemas`` (Create / Public pairs, ``{data, count}`` lists), ``studies`` and
``catalog`` (domain functions, no HTTP), ``routes/`` (thin handlers), ``app`` (the
factory, auth, limits, error bodies, the status sync).
"""

from service.api.app import create_app
from service.api.config import ApiSettings

__all__ = ["ApiSettings", "create_app"]
