"""``GET /``: a page for people. Server-rendered HTML, no build step.

The page at ``/`` is a small open shell: it asks once for the API token (kept in the
browser tab's ``sessionStorage``), then fetches server-rendered HTML fragments —
``/pages/studies`` (every study: status, progress, best value, links) and
``/pages/studies/{study}`` (one study and its trials) — with ``Authorization: Bearer``,
behind the same auth as the rest of the API. ``/?study=ID`` opens a study; a
``#token=...`` fragment (never sent to the server) fills the token in.
"""

from __future__ import annotations

import html
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from service.api import lifecycle, queries
from service.api.deps import Authenticated, PrincipalDep, ServicesDep
from service.api.routes.studies import StudyRef, to_public

router = APIRouter(include_in_schema=False)
fragments = APIRouter(prefix="/pages", include_in_schema=False, dependencies=[Authenticated])

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .6em}h2{font-size:1.15em}
table{border-collapse:collapse;width:100%}th,td{padding:.35em .6em;text-align:left;
border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.SUCCEEDED,.COMPLETE{color:#176e2b}.FAILED{color:#b00020}.RUNNING{color:#0b57d0}
.CANCELLED,.PRUNED,.PENDING{color:#777}
.bar{display:inline-block;width:80px;height:8px;background:#eee;margin-right:.4em}
.bar span{display:block;height:8px;background:#0b57d0}
#token{display:none;margin:1em 0}.muted{color:#777}a{color:#0b57d0}
"""

_SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>credit-search studies</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head><body>
<h1><a href="/">credit-search</a> <span class="muted">study service</span></h1>
<form id="token"><label>API token (<code>CREDIT_HOME/api_token</code>):
<input id="token-value" type="password" size="44" autocomplete="off"></label>
<button>Open</button> <span id="token-error" class="FAILED"></span></form>
<main id="main"><p class="muted">loading ...</p></main>
<p class="muted"><a href="/docs">API docs</a></p>
<script>
const KEY = "credit-api-token";
const study = new URLSearchParams(location.search).get("study");
if (location.hash.startsWith("#token=")) {{  // a link that carries the token (never sent)
  sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname + location.search);
}}
const offset = new URLSearchParams(location.search).get("offset");
const path = study ? "/pages/studies/" + encodeURIComponent(study)
  + (offset ? "?offset=" + encodeURIComponent(offset) : "") : "/pages/studies";
async function load() {{
  const token = sessionStorage.getItem(KEY);
  const headers = token ? {{"Authorization": "Bearer " + token}} : {{}};
  const r = await fetch(path, {{headers}});
  if (r.status === 401 || r.status === 403) {{
    if (token) {{
      sessionStorage.removeItem(KEY);
      document.getElementById("token-error").textContent = "that token was refused";
    }}
    document.getElementById("token").style.display = "block";
    document.getElementById("main").innerHTML = "";
    return;
  }}
  document.getElementById("token").style.display = "none";
  if (!r.ok) {{
    let reason = r.status + " " + r.statusText;
    try {{ reason = (await r.json()).detail.map((d) => d.msg).join("; "); }} catch (e) {{}}
    const p = document.createElement("p");
    p.className = "FAILED";
    p.textContent = reason;
    document.getElementById("main").replaceChildren(p);
    return;
  }}
  document.getElementById("main").innerHTML = await r.text();
}}
document.getElementById("token").addEventListener("submit", (e) => {{
  e.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token-value").value.trim());
  load();
}});
document.addEventListener("click", async (e) => {{  // downloads that need the token
  const a = e.target.closest("a[data-auth]");
  if (!a) return;
  e.preventDefault();
  const token = sessionStorage.getItem(KEY);
  const r = await fetch(a.href, {{headers: token ? {{"Authorization": "Bearer " + token}} : {{}}}});
  const url = URL.createObjectURL(await r.blob());
  const name = (r.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
  const link = Object.assign(document.createElement("a"), {{href: url,
    download: name ? name[1] : "export"}});
  link.click();
  URL.revokeObjectURL(url);
}});
load();
setInterval(() => {{ if (sessionStorage.getItem(KEY) !== null ||
  document.getElementById("token").style.display === "none") load(); }}, 10000);
</script></body></html>
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else _e(value)


def _link(url: str | None, text: str) -> str:
    return f'<a href="{_e(url)}" target="_blank" rel="noopener">{_e(text)}</a>' if url else ""


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    """The page shell (open: it holds no data; the fragments it loads need the token)."""
    return HTMLResponse(_SHELL.format(style=_STYLE))


@fragments.get("/studies", response_class=HTMLResponse)
def studies_fragment(services: ServicesDep, principal: PrincipalDep) -> HTMLResponse:
    records, count = queries.list_studies(services, None, 0, 200, principal)
    rows = []
    for record in records:
        s = to_public(services, record)
        c = s.counts
        done = c.complete + c.failed + c.pruned
        width = int(100 * min(1.0, done / s.max_trials)) if s.max_trials else 0
        best = "-" if s.best is None else _num(s.best.value)
        links = " ".join(x for x in (_link(s.links.mlflow, "MLflow runs"),
                                     _link(getattr(s.links, "optuna", None), "Optuna")) if x)
        rows.append(
            f'<tr><td><a href="/?study={_e(s.id)}">{_e(s.name)}</a></td>'
            f'<td class="{_e(s.status)}">{_e(s.status)}</td>'
            f'<td><span class="bar"><span style="width:{width}%"></span></span>'
            f"{done}/{s.max_trials}{f' ({c.failed} failed)' if c.failed else ''}"
            f"{f' ({s.restarts} restarts)' if s.restarts else ''}</td>"
            f'<td class="num">{best}</td><td>{_e(s.objective.get("metric"))} '
            f'({_e(s.objective.get("mode"))})</td><td>{_e(s.space)}</td>'
            f'<td>{_e(s.created_at.strftime("%Y-%m-%d %H:%M"))}</td><td>{links}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="8" class="muted">no studies yet: ' \
        "<code>credit studies submit --space NAME</code></td></tr>"
    return HTMLResponse(
        f"<h2>Studies ({count})</h2><table id=\"studies\"><thead><tr><th>study</th>"
        "<th>status</th><th>trials</th><th>best</th><th>objective</th><th>space</th>"
        f"<th>created</th><th>links</th></tr></thead><tbody>{body}</tbody></table>")


#: Trials shown on one page of a study (``?offset=`` pages on).
PAGE_TRIALS = 200


def _pager(study_id: str, offset: int, shown: int, total: int) -> str:
    """"trials a–b of n", with links to the pages before and after (``?offset=``)."""
    if total <= PAGE_TRIALS and offset == 0:
        return ""
    base = f"/?study={_e(study_id)}&offset="
    before = f'<a href="{base}{max(0, offset - PAGE_TRIALS)}">previous</a>' if offset else ""
    after = f'<a href="{base}{offset + PAGE_TRIALS}">next</a>' \
        if offset + shown < total else ""
    where = f"trials {offset + 1}–{offset + shown} of {total}" if shown else \
        f"no trials from {offset + 1} (of {total})"
    return f'<p id="pager">{where} {" · ".join(x for x in (before, after) if x)}</p>'


@fragments.get("/studies/{study}", response_class=HTMLResponse)
def study_fragment(study: StudyRef, services: ServicesDep, principal: PrincipalDep,
                   offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0) -> HTMLResponse:
    record = lifecycle.trials_record(services, study, principal)
    s = to_public(services, record)
    trials, total = queries.trials_page(services, record, offset, PAGE_TRIALS)
    names = sorted(services.spec_of(record).search_space().params)
    best = "" if s.best is None else (
        f"<p>best {_e(s.objective.get('metric'))}: <b>{_num(s.best.value)}</b> with "
        + ", ".join(f"{_e(k)} = {_num(v)}" for k, v in sorted(s.best.params.items())) + "</p>")
    links = " · ".join(x for x in (
        _link(s.links.mlflow, "MLflow runs"), _link(getattr(s.links, "optuna", None), "Optuna"),
        f'<a data-auth href="/studies/{_e(s.id)}/export?format=csv" download>CSV</a>',
        f'<a data-auth href="/studies/{_e(s.id)}/export?format=json" download>JSON</a>')
        if x)
    rows = []
    for t in trials:
        params = "".join(f'<td class="num">{_num(t["params"].get(n))}</td>' for n in names)
        rows.append(
            f'<tr><td class="num">{t["number"]}</td>'
            f'<td class="{_e(t["state"])}">{_e(t["state"])}</td>'
            f'<td class="num">{int(t.get("restarts") or 0)}</td>{params}'
            f'<td class="num">{_num(t["value"])}</td><td>{_e(t.get("failure") or "")}</td>'
            f'<td>{_link(t["mlflow_url"], "run")}</td></tr>')
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    body = "".join(rows) or f'<tr><td colspan="{6 + len(names)}" class="muted">' \
        "no trials yet</td></tr>"
    return HTMLResponse(
        f'<h2>{_e(s.name)} <span class="{_e(s.status)}">{_e(s.status)}</span></h2>'
        f"<p>{_e(s.message)}</p>{best}"
        f'<p id="restarts">trial restarts after infrastructure failures: {s.restarts}</p>'
        f"<p>{links}</p>{_pager(s.id, offset, len(trials), total)}"
        f'<table id="trials"><thead><tr><th>trial</th><th>state</th><th>restarts</th>{head}'
        f"<th>{_e(s.objective.get('metric'))}</th><th>failure</th><th>MLflow</th></tr>"
        f"</thead><tbody>{body}</tbody></table>")
