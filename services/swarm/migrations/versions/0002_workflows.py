"""Workflows: DAGs of typed steps (services/swarm/dag.py), run on the same DBOS engine as investigations.

`spec` is the validated DAG as submitted (defaults filled in); `steps` holds each step's state by
step id: {status, output, error, started_at, finished_at}. A step's output is written here once it
finishes, so later steps (and a replica that resumes the workflow) read it from this row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        create table swarm.workflows (
            id text primary key,
            name text not null default '',
            spec jsonb not null,
            status text not null default 'queued' check (status in
                ('queued', 'running', 'completed', 'failed', 'cancelled')),
            progress double precision not null default 0,
            steps jsonb not null default '{}',
            error text not null default '',
            cancel_requested boolean not null default false,
            created_at timestamptz not null default now(),
            started_at timestamptz,
            finished_at timestamptz
        )
    """)
    op.execute("create index workflows_newest on swarm.workflows (created_at desc, id desc)")


def downgrade() -> None:
    op.execute("drop table swarm.workflows")
