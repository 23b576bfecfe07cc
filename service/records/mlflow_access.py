"""Who may read what in MLflow, where its server runs MLflow's ``basic-auth`` app.

Every named owner of the API is an MLflow user of the same name whose password is their
API token (one sign-in per person); an owner's studies go to an experiment of theirs
(``owner_experiment``), on which they have READ; other owners have nothing
(``default_permission = NO_PERMISSIONS``); ``:admin`` owners are MLflow admins. Runs are
written by the service's own account (an MLflow admin, its password a setting), whose
credentials reach MLflow's client through ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` in the service's and the cluster nodes' environment.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from mlflow.exceptions import RestException
from mlflow.server import get_app_client

from service.records import tracking

#: What an owner may do with their own studies' runs.
OWNER_PERMISSION = "READ"


def owner_experiment(base: str, owner: str) -> str:
    """The experiment of ``owner``'s studies (``base`` for studies of no one)."""
    return f"{base}/{owner}" if owner else base


def auth_file(default_permission: str, database_uri: str, admin_username: str) -> str:
    """The ``MLFLOW_AUTH_CONFIG_PATH`` ini of a server: nobody sees anything unless given
    it, users kept in ``database_uri``, the service's account its admin (its password is
    given by ``MLFLOW_AUTH_ADMIN_PASSWORD`` at the first start, never written here)."""
    return ("[mlflow]\n"
            f"default_permission = {default_permission}\n"
            f"database_uri = {database_uri}\n"
            f"admin_username = {admin_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
            # each request checks a PBKDF2 hash: cache a good one for a minute
            "auth_cache_ttl_seconds = 60\n")


def _exists(error: RestException) -> bool:
    return error.error_code == "RESOURCE_ALREADY_EXISTS"


def sync_users(tracking_uri: str, owners: dict[str, tuple[str, bool]],
               former: Iterable[str] = ()) -> None:
    """Each owner an MLflow user with their token as password and their admin flag, made
    or brought in step (tokens change at a restart); each ``former`` owner (owns studies,
    no longer has a token) locked out with a random password nobody knows."""
    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    for name, (password, admin) in owners.items():
        try:
            auth.create_user(name, password)
        except RestException as error:
            if not _exists(error):
                raise
            auth.update_user_password(name, password)
        auth.update_user_admin(name, admin)
    for name in set(former) - set(owners):
        try:
            auth.update_user_password(name, secrets.token_urlsafe(32))
            auth.update_user_admin(name, False)
        except RestException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise


def open_owner_experiment(tracking_uri: str, base: str, owner: str) -> str:
    """``owner``'s experiment (made if missing), readable by them; its id."""
    experiment_id = tracking.ensure_experiment(tracking_uri, owner_experiment(base, owner),
                                               None)
    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        auth.grant_user_permission(owner, "experiment", experiment_id, OWNER_PERMISSION)
    except RestException as error:  # their earlier studies' grant
        if not _exists(error):
            raise
    return experiment_id
