"""The service's page for people, rendered on the server: Jinja2 templates (autoescaped)
in ``templates/``, plots as inline SVG (``charts``), the data of a study's view
(``study``) and of a comparison of studies (``compare``). The routes are
``service.api.routes.pages``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from service.text import mean_sem, number

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters["num"] = number
TEMPLATES.filters["mean_sem"] = lambda pair, fmt=".4g": mean_sem(pair[0], pair[1], fmt)


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` with ``context``."""
    return TEMPLATES.get_template(template).render(**context)
