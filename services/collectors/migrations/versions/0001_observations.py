"""Observations with provenance, and completed task runs (Celery exactly-once bookkeeping).

An observation is one (collector, source, entity, investigation) sighting; its id is UUIDv5 over
those, so collecting the same thing again updates last_seen rather than adding a row.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        create table collectors.observations (
            id uuid primary key,
            entity_id text not null,
            entity_type text not null,
            value text not null,
            source text not null,
            collector text not null,
            investigation_id text not null default '',
            tlp text not null check (tlp in ('clear', 'green', 'amber', 'amber+strict', 'red')),
            confidence smallint not null check (confidence between 0 and 100),
            first_seen timestamptz not null,
            last_seen timestamptz not null
        )
    """)
    op.execute("create index observations_entity on collectors.observations (entity_id)")
    op.execute("create index observations_investigation on collectors.observations (investigation_id)"
               " where investigation_id <> ''")
    op.execute("""
        create table collectors.task_runs (
            task_key text primary key,
            task_name text not null,
            finished_at timestamptz not null default now(),
            observations integer not null
        )
    """)


def downgrade() -> None:
    op.execute("drop table collectors.task_runs")
    op.execute("drop table collectors.observations")
