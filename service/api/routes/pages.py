"""``GET /``: a page for people. Server-rendered HTML, no build step, offline.

The page at ``/`` is a small open shell (``views/templates/shell.html``): it asks once for
the API token (kept in the browser tab's ``sessionStorage``), then fetches server-rendered
HTML fragments with ``Authorization: Bearer``, behind the same auth as the rest of the API:

- ``/pages/studies``: every study (status, progress, best value, links), each with a
  box to tick; two to four ticked open their comparison;
- ``/pages/studies/{study}`` (``/?study=ID``): one study: its best value, the final
  seeds' mean ± s.e.m., the best-so-far curve, the objective against each searched
  parameter, the Pareto front of several objectives, its trials;
- ``/pages/compare?ids=A,B`` (``/ui/compare?ids=A,B``): two to four studies, their
  best-so-far curves overlaid and their best configurations side by side.

A fragment of a study that runs says so (``data-refresh``): the shell fetches it again
every 2 s, without reloading the page, until the study has ended. A ``#token=...``
fragment of the URL (never sent to the server) fills the token in.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse

from service.api import queries, queue
from service.api.deps import Authenticated, PrincipalDep, ServicesDep
from service.api.errors import StudyNotFound
from service.api.routes.studies import StudyRef, to_public
from service.api.views import render
from service.api.views.study import compare_context, study_context

router = APIRouter(include_in_schema=False)
fragments = APIRouter(prefix="/pages", include_in_schema=False, dependencies=[Authenticated])

#: How many studies a comparison takes.
COMPARE_MIN, COMPARE_MAX = 2, 4
_REF = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
INDEX_REFRESH_MS = 10000


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    """The page shell (open: it holds no data; the fragments it loads need the token)."""
    return HTMLResponse(render("shell.html"))


@router.get("/ui/compare", response_class=HTMLResponse)
def compare_shell() -> HTMLResponse:
    """The shell of a comparison (``?ids=A,B``; it loads ``/pages/compare``)."""
    return HTMLResponse(render("shell.html"))


@fragments.get("/studies", response_class=HTMLResponse)
def studies_fragment(services: ServicesDep, principal: PrincipalDep) -> HTMLResponse:
    records, count = queries.list_studies(services, None, 0, 200, principal)
    positions = queue.positions(services)
    rows = []
    for record in records:
        s = to_public(services, record, principal, positions)
        done = s.counts.complete + s.counts.failed + s.counts.pruned
        rows.append({"s": s, "done": done, "width": int(100 * min(1.0, done / s.max_trials))
                     if s.max_trials else 0})
    return HTMLResponse(render("studies.html", rows=rows, count=count,
                               refresh_ms=INDEX_REFRESH_MS))


@fragments.get("/studies/{study}", response_class=HTMLResponse)
def study_fragment(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
                   offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0) -> HTMLResponse:
    return HTMLResponse(render("study.html",
                               **study_context(services, study, principal, offset)))


def _bad_ids(status: int, msg: str, kind: str) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["query", "ids"], "msg": msg, "type": kind}])


def parse_ids(ids: str) -> list[str]:
    """The studies of ``ids`` (comma-separated ids or names), two to four, each once."""
    refs = [r.strip() for r in ids.split(",") if r.strip()]
    bad = [r for r in refs if not _REF.fullmatch(r)]
    if bad:
        raise _bad_ids(422, f"{bad[0]!r} is not a study id or name (letters, digits, "
                       "'.', '_', '-'; at most 64)", "value_error")
    if not COMPARE_MIN <= len(refs) <= COMPARE_MAX:
        raise _bad_ids(422, f"give {COMPARE_MIN} to {COMPARE_MAX} studies, separated by "
                       f"commas (got {len(refs)})", "value_error")
    twice = sorted({r for r in refs if refs.count(r) > 1})
    if twice:
        raise _bad_ids(422, f"{twice[0]!r} is given twice", "value_error")
    return refs


@fragments.get("/compare", response_class=HTMLResponse)
def compare_fragment(services: ServicesDep, principal: PrincipalDep,
                     ids: Annotated[str, Query(max_length=400)] = "") -> HTMLResponse:
    refs = parse_ids(ids)
    try:
        context = compare_context(services, refs, principal)
    except StudyNotFound as error:
        raise _bad_ids(404, str(error), "not_found") from None
    names = [d.public.id for d in context["studies"]]
    if len(set(names)) < len(names):
        raise _bad_ids(422, "the same study is given twice (by its id and its name)",
                       "value_error")
    return HTMLResponse(render("compare.html", **context))
