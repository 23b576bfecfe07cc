"""``credit serve``'s work: the HTTP study service (uvicorn), alone or with its local
stack (see ``service.commands.serve``)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.api import lifecycle
from service.api.app import create_app
from service.api.config import ApiSettings
from service.api.dashboard_gate import owners_file
from service.api.startup import serve_refusal
from service.commands.options import UsageError, validation_message
from service.local.discovery import remove_server, server_file, write_secret, write_server
from service.local.record import StackGuard
from service.local.stack import (
    NODE_IP,
    LocalRayHead,
    MlflowAuth,
    MlflowServer,
    OptunaDashboard,
    StackError,
)
from service.local.startup import start_together
from service.records.mlflow_access import auth_file
from service.records.stores import check_database
from service.records.tracking import account_env


class _Stop(Exception):
    """Ctrl-C or SIGTERM: leave the server and clean up."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


def _settings(args: argparse.Namespace, **overrides):

    if args.insecure:
        overrides["insecure"] = True
    try:
        settings = ApiSettings(**overrides)
        settings.check_startable()
    except ValidationError as e:
        raise UsageError(validation_message(e, lambda f: "CREDIT_" + f.upper())) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    return settings


def api_token_file(home: Path) -> Path:
    return home / "api_token"


def ensure_api_token(home: Path) -> str:
    """The token in CREDIT_HOME/api_token, generated (mode 0600) if missing."""

    path = api_token_file(home)
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_secret(path, token)
    return token


def _mlflow_password(settings: ApiSettings) -> str:
    """The service's MLflow password: CREDIT_MLFLOW_PASSWORD, else one made once and kept
    in CREDIT_HOME/mlflow_service_password (0600)."""
    if settings.mlflow_password is not None:
        return settings.mlflow_password.get_secret_value()
    path = settings.home / "mlflow_service_password"
    if not (path.exists() and path.read_text().strip()):
        write_secret(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def _mlflow_auth(settings: ApiSettings, password: str) -> MlflowAuth:
    """MLflow's sign-in for the local stack: its users in CREDIT_HOME/mlflow-auth.db,
    nobody sees anything unless given it, the service's account its admin."""
    home = settings.home
    key = home / "mlflow_secret_key"
    if not (key.exists() and key.read_text().strip()):
        write_secret(key, secrets.token_hex(32))
    config = write_secret(home / "mlflow-auth.ini", auth_file(
        "NO_PERMISSIONS", f"sqlite:///{home / 'mlflow-auth.db'}", settings.mlflow_username))
    return MlflowAuth(config, password, key.read_text().strip())


def _uvicorn(app, args: argparse.Namespace):
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            proxy_headers=False, server_header=False, timeout_graceful_shutdown=10)
    return uvicorn.Server(config)


def _defaults_for_clients() -> None:
    # MLflow's REST client retries for minutes on a dead server; the API should say so soon.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: must be 1-65535 (got {args.port})")
    if args.startup_timeout is not None and not 0 < args.startup_timeout <= 86_400:
        raise UsageError(f"--startup-timeout: must be > 0 and <= 86400 seconds "
                         f"(got {args.startup_timeout:g})")
    _defaults_for_clients()
    if args.local:
        return _serve_local(args)

    settings = _settings(args)

    for setting, url in (("CREDIT_DATABASE_URL", settings.database_url),
                         ("CREDIT_OPTUNA_STORAGE", settings.optuna_storage),
                         ("CREDIT_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)):
        check_database(setting, url)  # a missing driver, a database down: exit 2, one line

    refusal = serve_refusal(settings)
    if refusal:
        raise UsageError(f"the Ray cluster is misconfigured: {refusal}")
    server = _uvicorn(create_app(settings), args)
    print(f"credit-search API on http://{args.host}:{args.port} (Ray {settings.ray_dashboard_url},"
          f" MLflow {settings.mlflow_tracking_uri})", file=sys.stderr, flush=True)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except _Stop:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if server.started else 1


def _serve_local(args: argparse.Namespace) -> int:
    base = _settings(args, insecure=True)  # tokens are settled below
    home = base.home
    guard = StackGuard(home)  # one stack per CREDIT_HOME; a crashed one's processes stop
    try:
        for line in guard.claim():
            print(f"stopped the {line}", file=sys.stderr, flush=True)
    except StackError as error:
        print(f"credit: error: {error}", file=sys.stderr)
        return 1
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    token = None if base.tokens or args.insecure else ensure_api_token(home)
    owners = bool(base.owners)  # named owners: MLflow and the dashboard ask who is there
    mlflow_password = _mlflow_password(base) if owners else None
    if mlflow_password is not None:  # the tokens must do as MLflow passwords: exit 2 if not
        base = _settings(args, insecure=True, mlflow_password=mlflow_password)
    head = LocalRayHead(num_cpus=args.cpus, num_gpus=args.gpus,
                        dashboard_port=args.dashboard_port, log_file=logs / "ray-start.log",
                        extra_env=account_env(base.mlflow_username, mlflow_password)
                        if mlflow_password else None)
    mlflow = MlflowServer(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts",
                          port=args.mlflow_port, log_file=logs / "mlflow.log",
                          auth=_mlflow_auth(base, mlflow_password) if owners else None)
    optuna = OptunaDashboard(base.optuna_storage, port=args.optuna_port,
                             log_file=logs / "optuna-dashboard.log",
                             owners_file=write_secret(home / "dashboard_owners",
                                                      owners_file(base.principals))
                             if owners else None)
    server = None
    services = None
    try:
        timeout = args.startup_timeout or base.startup_timeout
        print(f"starting Ray (head on {NODE_IP}, dashboard {head.dashboard_url}), MLflow "
              f"({mlflow.url}) and the Optuna dashboard ({optuna.url}) together; deadline "
              f"{timeout:.0f} s, logs in {logs}", file=sys.stderr, flush=True)
        _start_parts(guard, head, mlflow, optuna, timeout)
        ray_token_file = write_secret(home / "ray_token", head.token)
        overrides = dict(ray_dashboard_url=head.dashboard_url, ray_auth_token=head.token,
                         ray_node_ip=NODE_IP, mlflow_tracking_uri=mlflow.url,
                         mlflow_ui_url=mlflow.url, optuna_dashboard_url=optuna.url,
                         insecure=args.insecure)
        if mlflow_password is not None:
            overrides["mlflow_password"] = mlflow_password
        if token is not None:
            overrides["api_tokens"] = token
        settings = ApiSettings(**overrides)
        settings.check_startable()

        app = create_app(settings)
        services = app.state.services
        server = _uvicorn(app, args)
        url = f"http://{args.host}:{args.port}"
        where = (f"token in {api_token_file(home)}" if token is not None
                 else "token from CREDIT_API_TOKENS" if settings.tokens else "no token needed")
        write_server(home, {"url": url, "token_file": str(api_token_file(home))
                            if token is not None else None,
                            "mlflow_ui": mlflow.url, "optuna_dashboard": optuna.url,
                            "ray_dashboard": head.dashboard_url,
                            "ray_token_file": str(ray_token_file)})
        _print_up(home, url, where, mlflow.url, optuna.url, head.dashboard_url,
                  ray_token_file, owners)
        server.run()
        if not server.started:
            raise StackError(f"the API did not start on {args.host}:{args.port} "
                             "(is the port taken?)")
    except _Stop:
        pass
    except StackError as error:
        _print_stack_error(error)
        return 1
    finally:
        remove_server(home)
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, lambda *_: print("stopping, please wait ...", file=sys.stderr))
        _stop_stack(services, optuna, mlflow, head, guard)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _stop_stack(services, optuna, mlflow, head, guard) -> None:
    """The studies still running are cancelled, then every part we started stops."""
    print("stopping ...", file=sys.stderr, flush=True)
    if services is not None:
        _cancel_running(services)
    optuna.stop()
    mlflow.stop()
    head.stop()
    guard.release()
    print("stopped: API, MLflow, the Optuna dashboard and the Ray head.",
          file=sys.stderr, flush=True)


def _start_parts(guard, head, mlflow, optuna, timeout: float) -> None:
    """Ray, MLflow and the Optuna dashboard, started at once; each recorded in the
    stack record as it starts (a failed one too)."""

    start_together([("Ray", guard.recording("ray", head.start, lambda: head.sid),
                     head.log_file),
                    ("MLflow", guard.recording("mlflow", mlflow.start,
                                               lambda: mlflow.proc and mlflow.proc.pid),
                     mlflow.log_file),
                    ("Optuna dashboard",
                     guard.recording("optuna-dashboard", optuna.start,
                                     lambda: optuna.proc and optuna.proc.pid),
                     optuna.log_file)],
                   timeout, lambda line: print(line, file=sys.stderr, flush=True))


def _print_up(home, url: str, where: str, mlflow_url: str, optuna_url: str,
              ray_dashboard_url: str, ray_token_file, owners: bool) -> None:
    sign_in = "   (sign in: your owner name, your API token)" if owners else ""
    admins = "   (admins only: owner name, API token)" if owners else \
        "   (the study storage)"
    print(f"\ncredit-search is up (CREDIT_HOME={home})\n"
          f"  API        {url}   ({where})\n"
          f"  API docs   {url}/docs\n"
          f"  MLflow UI  {mlflow_url}{sign_in}\n"
          f"  Optuna     {optuna_url}/dashboard{admins}\n"
          f"  Ray        {ray_dashboard_url}   (dashboard; its token is in "
          f"{ray_token_file})\n"
          f"'credit studies ...' in another shell with the same CREDIT_HOME finds this "
          f"server ({server_file(home)}).\n"
          f"Ctrl-C stops the API, the studies still running, MLflow and this Ray head.\n",
          file=sys.stderr, flush=True)


def _print_stack_error(error) -> None:
    lines = getattr(error, "log_lines", [])
    if lines:
        print(f"last lines of {error.log_file}:", file=sys.stderr)
        for line in lines:
            print(f"  | {line}", file=sys.stderr)
    print(f"credit: error: {error}", file=sys.stderr)


def _cancel_running(services) -> None:
    try:
        n = lifecycle.cancel_active(services, "cancelled: the local stack was stopped")
    except Exception as error:  # the stack is going down whatever happens here
        print(f"could not cancel the running studies: {error}", file=sys.stderr)
        return
    if n:
        print(f"cancelled {n} running studies", file=sys.stderr, flush=True)
