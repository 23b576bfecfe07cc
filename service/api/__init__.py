"""The HTTP study service (FastAPI): ``create_app(settings)`` and its settings.

Layout, after the full-stack-fastapi-template: ``config`` (one pydantic-settings
object), ``schemas`` (Create / Public pairs, ``{data, count}`` lists); the study domain,
no HTTP: ``services`` (what it uses), ``validation``, ``lifecycle`` (submit, cancel),
``sync`` (each job followed to its end), ``queries`` (reads), ``reports``, ``choices``
(what a study can name), ``export``, ``health``; ``routes/`` (thin handlers); ``app``
(the factory), ``middleware`` (auth, limits, JSON bodies), ``handlers`` (error bodies),
``redaction`` (no credential in the access log); ``startup`` (``credit serve``'s
check of the cluster).
"""

from service.api.app import create_app
from service.api.config import ApiSettings

__all__ = ["ApiSettings", "create_app"]
