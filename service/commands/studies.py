"""``credit studies``: the study service's client (submit, list, show, best, cancel, wait).

Talks HTTP (httpx) to the API at ``--url`` / ``$CREDIT_URL``, else the local service
recorded in ``$CREDIT_HOME/server.json`` by ``credit serve --local``, else
http://127.0.0.1:8000, with the bearer token from ``--token`` / ``$CREDIT_TOKEN``, else
the token file that record names (``$CREDIT_HOME/api_token``). A study is
named by its id or its name. The server's 4xx answers (bad input) exit 2 with one
line naming the field; an unreachable server or a 5xx exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import quote

from service.commands.options import UsageError, add_study_options, study_fields
from service.commands.study_text import format_best, format_pareto, format_study, number, status
from service.local.discovery import home_dir, read_server, server_file
from trainables.errors import CreditError

DEFAULT_URL = "http://127.0.0.1:8000"
#: A study's statuses once it has ended.
STUDY_ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


class ServiceError(CreditError):
    """The service is unreachable or failed (exit status 1)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "studies", help="submit and follow studies on the study service (HTTP)",
        description="Client of the study service (see 'credit serve'). Server URL from "
        "--url or $CREDIT_URL; token from --token, $CREDIT_TOKEN or $CREDIT_HOME/api_token.",
        allow_abbrev=False,
    )
    sub = p.add_subparsers(title="study commands", dest="study_command", metavar="COMMAND",
                           parser_class=type(p))

    def command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        c.add_argument("--url", help=f"the service ($CREDIT_URL, default {DEFAULT_URL})")
        c.add_argument("--token", help="bearer token ($CREDIT_TOKEN, $CREDIT_HOME/api_token)")
        c.set_defaults(func=func)
        return c

    s = command("submit", "submit a study (a JSON file and/or flags)", submit)
    s.add_argument("file", nargs="?", metavar="FILE",
                   help="the study as JSON (the POST /studies body); flags override it")
    s.add_argument("--space", metavar="NAME", help="a search-space preset ('credit spaces')")
    add_study_options(s)
    s.add_argument("--wait", action="store_true", help="then wait for it, as 'wait' does")

    ls = command("list", "list studies, newest first", list_studies)
    ls.add_argument("--status", action="append",
                    help="only this status (QUEUED, PENDING, RUNNING, SUCCEEDED, FAILED, "
                         "CANCELLED)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many (0)")
    ls.add_argument("--json", action="store_true", help="the raw JSON answer")

    for name, help_text, func in (("show", "a study's state, counts, best so far, links", show),
                                  ("best", "the best configuration of a study", best),
                                  ("cancel", "cancel a study (stop its Ray job)", cancel)):
        c = command(name, help_text, func)
        c.add_argument("study", metavar="ID", help="the study's id or name")
        if name != "cancel":
            c.add_argument("--json", action="store_true", help="the raw JSON answer")

    w = command("wait", "show a study's progress until it ends, then its best configuration",
                wait)
    w.add_argument("study", metavar="ID", help="the study's id or name")
    w.add_argument("--interval", type=float, default=2.0, help="seconds between polls (2)")
    w.add_argument("--timeout", type=float, help="give up after this many seconds")

    x = command("export", "every trial of a study, one row each (CSV or JSON)", export)
    x.add_argument("study", metavar="ID", help="the study's id or name")
    x.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json")
    x.add_argument("--out", metavar="FILE", help="write to FILE (default: standard output)")

    t = command("trials", "every trial of a study (each page of GET /trials in turn)", trials)
    t.add_argument("study", metavar="ID", help="the study's id or name")
    t.add_argument("--json", action="store_true", help="one JSON object per trial and line")

    def missing(args: argparse.Namespace) -> int:
        raise UsageError("missing study command; valid: submit, list, show, best, cancel, wait, "
                         "export, trials")

    p.set_defaults(func=missing)


# ------------------------------------------------------------------------ client
class Client:
    """The few calls the commands make; errors become one-line ``UsageError`` (4xx) or
    ``ServiceError`` (unreachable, 5xx)."""

    def __init__(self, url: str | None, token: str | None):
        import httpx  # deferred: 0.2 s that --help and bad input need not pay


        self.home = home_dir()
        record = None
        if url:
            self.source = "--url"
        elif os.environ.get("CREDIT_URL"):
            url, self.source = os.environ["CREDIT_URL"], "CREDIT_URL"
        elif (record := read_server(self.home)) is not None:
            if not record["running"]:
                raise ServiceError(
                    f"the local service recorded in {server_file(self.home)} is not running "
                    f"(pid {record.get('pid')}): start it with 'credit serve --local', or set "
                    "CREDIT_URL to a running service")
            url, self.source = record["url"], str(server_file(self.home))
        else:
            url, self.source = DEFAULT_URL, "the default"
        self.url = url.rstrip("/")
        if token or os.environ.get("CREDIT_TOKEN"):
            self.token_source = "--token" if token else "CREDIT_TOKEN"
            token = token or os.environ["CREDIT_TOKEN"]
        else:
            path = Path(record["token_file"]) if record and record.get("token_file") \
                else self.home / "api_token"
            token, self.token_source = _token_file(path), str(path)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def call(self, method: str, path: str, text: bool = False, **kwargs) -> Any:
        r = self._request(method, path, **kwargs)
        return r.text if text else r.json()

    def download(self, path: str, out, **kwargs) -> None:
        """GET ``path`` into the text file ``out`` as it arrives (a streamed body)."""
        import httpx  # deferred: 0.2 s that --help and bad input need not pay

        try:
            with self.http.stream("GET", path, **kwargs) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise("GET", path, r)
                for piece in r.iter_text():
                    out.write(piece)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: Exception) -> ServiceError:
        return ServiceError(
            f"cannot reach the study service at {self.url} (from {self.source}): "
            f"{error or type(error).__name__}; start one with 'credit serve --local' "
            f"(CREDIT_HOME={self.home}), or set CREDIT_URL (or --url) to a running service")

    def _request(self, method: str, path: str, **kwargs) -> Any:
        import httpx  # deferred: 0.2 s that --help and bad input need not pay

        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        if r.status_code >= 400:
            self._raise(method, path, r)
        return r

    def _raise(self, method: str, path: str, r: Any) -> None:
        text = _problems(r)
        if r.status_code in (401, 403):
            raise UsageError(
                f"{method} {path}: {r.status_code} {text}; the token came from "
                f"{self.token_source}: set CREDIT_TOKEN (or --token) to one of the server's "
                "CREDIT_API_TOKENS, or CREDIT_HOME to the one 'credit serve --local' uses "
                "(it keeps its token in CREDIT_HOME/api_token)")
        if r.status_code == 404 and path.startswith("/studies/"):
            raise UsageError(f"{method} {path}: {r.status_code} {text}; "
                             "list the studies with 'credit studies list'")
        if r.status_code < 500:
            raise UsageError(f"{method} {path}: {r.status_code} {text}")
        raise ServiceError(f"{method} {path}: {r.status_code} {text}")


def _token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _problems(r) -> str:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return r.text[:300]
    if isinstance(detail, list):
        parts = []
        for d in detail:
            loc = [str(p) for p in d.get("loc", []) if p not in ("body", "path", "query")]
            parts.append(f"{'.'.join(loc)}: {d.get('msg')}" if loc else str(d.get("msg")))
        return "; ".join(parts)
    return str(detail)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


# ---------------------------------------------------------------------- commands
def study_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /studies body: the FILE's JSON, then the flags given."""
    body: dict[str, Any] = {}
    if args.file:
        try:
            body = json.loads(Path(args.file).read_text())
        except OSError as e:
            raise UsageError(f"{args.file}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise UsageError(f"{args.file}: not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(body, dict):
            raise UsageError(f"{args.file}: must hold a JSON object (the study)")
    if args.space:
        body["space"] = args.space
    body = study_fields(args, body)
    if "space" not in body:
        raise UsageError("give a study FILE or --space NAME (see 'credit spaces')")
    if "name" not in body:
        space = body["space"] if isinstance(body["space"], str) else \
            str(body["space"].get("name", "study"))
        body["name"] = f"{space[:40]}-{time.strftime('%Y%m%d-%H%M%S')}".lower()
    return body


def submit(args: argparse.Namespace) -> int:
    client = _client(args)
    study = client.call("POST", "/studies", json=study_body(args))
    print(f"submitted study {study['name']} (id {study['id']}): {status(study)}")
    print(f"  {client.url}{study['links']['self']}")
    if args.wait:
        return _wait(client, study["id"], 2.0, None)
    return 0


def list_studies(args: argparse.Namespace) -> int:
    client = _client(args)
    params: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
    if args.status:
        params["status"] = [s.upper() for s in args.status]
    page = client.call("GET", "/studies", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    rows = [("ID", "NAME", "STATUS", "TRIALS", "BEST", "CREATED")]
    for s in page["data"]:
        c = s["counts"]
        done = c["complete"] + c["failed"] + c["pruned"]
        best = "-" if s["best"] is None else f"{s['best']['value']:.4g}"
        rows.append((s["id"][:8], s["name"], status(s), f"{done}/{s['max_trials']}",
                     best, s["created_at"][:19].replace("T", " ")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(page['data'])} of {page['count']} studies")
    return 0


def show(args: argparse.Namespace) -> int:
    client = _client(args)
    study = client.call("GET", f"/studies/{args.study}")
    front = client.call("GET", f"/studies/{args.study}/pareto") \
        if len(study.get("objectives") or []) > 1 else None
    if args.json:
        print(json.dumps({**study, "pareto": front} if front else study, indent=2))
    else:
        print(format_study(study, client.url) + (f"\n{format_pareto(front)}" if front else ""))
    return 0


def best(args: argparse.Namespace) -> int:
    client = _client(args)
    found = client.call("GET", f"/studies/{args.study}/best")
    print(json.dumps(found, indent=2) if args.json else format_best(found))
    return 0


def cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    study = client.call("POST", f"/studies/{args.study}/cancel")
    print(f"study {study['name']}: {study['status']}")
    return 0


def wait(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval: must be > 0 (got {args.interval})")
    return _wait(_client(args), args.study, args.interval, args.timeout)


def _wait(client: Client, ref: str, interval: float, timeout: float | None) -> int:
    """A progress bar (trials done / max_trials, best so far) until the study ends."""
    from tqdm import tqdm  # deferred: only --wait draws a bar

    start = time.monotonic()
    study = client.call("GET", f"/studies/{ref}")
    bar = tqdm(total=study["max_trials"], desc=study["name"], unit="trial", file=sys.stderr,
               dynamic_ncols=True)
    try:
        while True:
            c = study["counts"]
            bar.n = min(c["complete"] + c["failed"] + c["pruned"], bar.total)
            best_text = "-" if study["best"] is None else f"{study['best']['value']:.4g}"
            seeds = study["spec"].get("final_seeds") or 0
            doing = (f"final evaluation of the best ({seeds} seeds)"
                     if study["status"] == "RUNNING" and seeds and bar.n >= bar.total
                     else "waiting for a free slot" if study["status"] == "QUEUED"
                     else f"{c['running']} running")
            bar.set_postfix_str(f"{status(study)} · {doing} · "
                                f"best {study['objective']['metric']} {best_text}")
            if study["status"] in STUDY_ENDED:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                raise ServiceError(f"study {study['name']} still {study['status']} after "
                                   f"{timeout:g} s")
            time.sleep(interval)
            try:
                study = client.call("GET", f"/studies/{study['id']}")
            except ServiceError as error:  # the API restarting: keep waiting
                bar.write(f"(retrying: {error})")
    finally:
        bar.close()
    print(format_study(study, client.url))
    if study["counts"]["complete"] > 0:
        print()
        print(format_best(client.call("GET", f"/studies/{study['id']}/best")))
    return 0 if study["status"] == "SUCCEEDED" else 1


def export(args: argparse.Namespace) -> int:
    client = _client(args)
    path = f"/studies/{quote(args.study, safe='')}/export"
    with open(args.out, "w", newline="") if args.out else nullcontext(sys.stdout) as out:
        client.download(path, out, params={"format": args.format})
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def trials(args: argparse.Namespace) -> int:
    """Every trial, a page of ``GET /studies/{id}/trials`` at a time, until ``count``."""
    client = _client(args)
    path, offset, count = f"/studies/{quote(args.study, safe='')}/trials", 0, None
    while count is None or offset < count:
        page = client.call("GET", path, params={"offset": offset, "limit": 1000})
        count = page["count"] if page["data"] else 0
        for t in page["data"]:
            params = " ".join(f"{k}={number(v)}" for k, v in sorted(t["params"].items()))
            print(json.dumps(t) if args.json else
                  f"{t['number']:>6}  {t['state']:<8}  {number(t['value']):>10}  {params}")
        offset += len(page["data"])
    return 0
