"""The corpus schema in PostgreSQL, versioned with Alembic and applied at every start (bev.migrations).

Alembic over yoyo-migrations: it is actively released (yoyo's last release is from 2024), runs
each migration in one transaction on PostgreSQL, and keeps its version table where we say
(corpus.alembic_version), so the collectors' own migrations in the same database never collide.
The tables live in their own schema, `corpus`, owned by this service alone.
"""

from __future__ import annotations

from pathlib import Path

from bev import migrations

SCHEMA = "corpus"
MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(dsn: str) -> str:
    """Bring the corpus schema to the newest revision (idempotent, blocking); returns the revision."""
    return migrations.migrate(dsn, SCHEMA, MIGRATIONS)
