"""``credit serve``: the HTTP study service (uvicorn), alone or with its local stack.

``credit serve`` runs the API against the cluster and stores its settings name
(``CREDIT_RAY_DASHBOARD_URL``, ``CREDIT_MLFLOW_TRACKING_URI``, ...; see
``deploy/README.md``). ``credit serve --local`` first starts a private Ray head (with
its dashboard, token authentication, loopback only) and ``mlflow server --workers 1``
on loopback, points the API at them, and on Ctrl-C or SIGTERM stops the API, then
cancels the studies still running, then stops MLflow and that Ray head — only those.
"""

from __future__ import annotations

import argparse

from service.commands.options import run_action


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the HTTP study service (with --local: and its Ray and MLflow)",
        description="Run the study service's HTTP API. Settings come from CREDIT_* "
        "environment variables (see deploy/README.md); --local also starts a private Ray "
        "head and an MLflow server on loopback and stops them on Ctrl-C.",
        allow_abbrev=False,
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    p.add_argument("--local", action="store_true",
                   help="also start a private Ray head (dashboard, token auth) and an MLflow "
                   "server, all on loopback; Ctrl-C stops all of them")
    p.add_argument("--cpus", type=int, help="--local: CPUs of the Ray head (all of them)")
    p.add_argument("--gpus", type=int, help="--local: GPUs of the Ray head (autodetect)")
    p.add_argument("--mlflow-port", type=int, help="--local: MLflow port (5000 if free)")
    p.add_argument("--optuna-port", type=int,
                   help="--local: Optuna dashboard port (8080 if free)")
    p.add_argument("--dashboard-port", type=int,
                   help="--local: Ray dashboard port (8265 if free)")
    p.add_argument("--startup-timeout", type=float, metavar="SECONDS",
                   help="--local: how long Ray and MLflow may take to start, together "
                   "($CREDIT_STARTUP_TIMEOUT, 600)")
    p.add_argument("--insecure", action="store_true",
                   help="run without any API token: every request is let in")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve (``actions.serve``): its settings are checked there, with the API's model."""
    return run_action("serve:serve", args)
