"""Database URLs checked at start: one clear line for a missing driver or an unreachable
server, before anything is recorded (no run left RUNNING, no study name taken).

PostgreSQL is the production store of the service database
(``CREDIT_DATABASE_URL``), the Optuna storage (``CREDIT_OPTUNA_STORAGE``,
``--storage``) and MLflow's backend (behind ``mlflow server``), all as
``postgresql+psycopg://user:password@host:port/db`` (the ``psycopg`` driver is a
dependency of credit-search).
"""

from __future__ import annotations

from trainables.errors import ConfigError

CONNECT_TIMEOUT_S = 10


class StoreUnavailable(ConfigError):
    """A configured database cannot be used (one line: the setting, the URL, why)."""


def _shown(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it as given
        return url


def check_database(setting: str, url: str) -> None:
    """Connect once to a SQLAlchemy URL (sqlite files are left alone: created on use)."""
    if url.startswith("sqlite") or "://" not in url or url.startswith(("http", "file:")):
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = _shown(url)
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, connect_args=args)
    except (ImportError, ModuleNotFoundError) as error:
        name = getattr(error, "name", None) or str(error)
        hint = " (pip install 'psycopg[binary]')" if "psycopg" in url else ""
        raise StoreUnavailable(f"{setting}={shown}: its database driver is not installed "
                               f"({name}){hint}") from None
    except (NoSuchModuleError, ArgumentError) as error:
        raise StoreUnavailable(f"{setting}={shown}: not a usable database URL "
                               f"({' '.join(str(error).split())[:200]}); PostgreSQL is "
                               "postgresql+psycopg://user:password@host:port/db") from None
    try:
        with engine.connect() as con:
            con.execute(text("select 1"))
    except SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        reason = " ".join(str(cause).split())[:300]
        raise StoreUnavailable(f"{setting}={shown}: the database is unreachable ({reason})"
                               ) from None
    finally:
        engine.dispose()
