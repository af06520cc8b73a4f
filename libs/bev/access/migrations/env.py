"""Alembic environment: see bev.migrations (the connection, lock and schema come from migrate())."""

from bev.migrations import run_in_alembic_env

run_in_alembic_env()
