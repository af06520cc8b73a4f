"""The corpus schema in PostgreSQL, versioned with Alembic and applied at every start.

Alembic over yoyo-migrations: it is actively released (yoyo's last release is from 2024), runs
each migration in one transaction on PostgreSQL, and keeps its version table where we say
(corpus.alembic_version), so the collectors' own migrations in the same database never collide.
The tables live in their own schema, `corpus`, owned by this service alone.
"""

from __future__ import annotations

from pathlib import Path

SCHEMA = "corpus"
VERSION_TABLE = "alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
# Replicas starting together take turns: the first migrates, the others find it done.
_MIGRATION_LOCK = 0x62657663  # "bevc"


def sqlalchemy_url(dsn: str) -> str:
    """postgresql://... (libpq form, as Vault hands it out) -> SQLAlchemy with the psycopg 3 driver."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ValueError("the postgres secret's dsn must start with postgresql://")
    return f"postgresql+psycopg://{rest}"


def migrate(dsn: str) -> str:
    """Bring the corpus schema to the newest revision (idempotent, blocking); returns the revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("select pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.execute(text(f"create schema if not exists {SCHEMA}"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "version_table_schema": SCHEMA}
            )
            revision = context.get_current_revision()
    finally:
        engine.dispose()
    return revision or ""
