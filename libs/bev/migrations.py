"""Alembic migrations for a service's own PostgreSQL schema, applied at every start.

Each service that owns a schema keeps its revisions in `services/<name>/migrations/` (whose
env.py calls `run_in_alembic_env`) and calls `migrate` at start: the whole upgrade runs in one
transaction under an advisory lock, so replicas starting together take turns, with the version
table inside the service's schema, so two services' migrations in one database never collide.
"""

from __future__ import annotations

import zlib
from pathlib import Path

VERSION_TABLE = "alembic_version"


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached; str() is one line, without the password."""


def sqlalchemy_url(dsn: str) -> str:
    """postgresql://... (libpq form, as Vault hands it out) -> SQLAlchemy with the psycopg 3 driver."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ValueError("the postgres secret's dsn must start with postgresql://")
    return f"postgresql+psycopg://{rest}"


def migrate(dsn: str, schema: str, migrations: Path) -> str:
    """Bring `schema` to the newest revision in `migrations` (idempotent, blocking); returns the revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["schema"] = schema
    engine = create_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    lock_key = zlib.crc32(f"bev-migrations:{schema}".encode())  # one lock per schema, stable
    try:
        with engine.begin() as connection:
            connection.execute(text("select pg_advisory_xact_lock(:key)"), {"key": lock_key})
            connection.execute(text(f'create schema if not exists "{schema}"'))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema})
            revision = context.get_current_revision()
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL: {str(exc.orig).strip().splitlines()[0]}") from None
    finally:
        engine.dispose()
    return revision or ""


def run_in_alembic_env() -> None:
    """The body of every service's migrations/env.py: run on the connection `migrate` opened and locked."""
    from alembic import context

    context.configure(
        connection=context.config.attributes["connection"],
        version_table=VERSION_TABLE,
        version_table_schema=context.config.attributes["schema"],
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
