"""Investigations, their evidence, tool calls, events, live agents and the replicas that run them.

The workflow itself (which step ran, its output) is DBOS's, in its own `dbos` schema; these tables
are what analysts read. Evidence and tool calls carry deterministic keys, so a step that runs again
after a crash (it died before DBOS recorded it) stores nothing twice.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        create table swarm.investigations (
            id text primary key,
            target text not null,
            target_type text not null,
            stix_type text not null,
            mode text not null,
            status text not null default 'queued' check (status in
                ('queued', 'running', 'completed', 'failed', 'cancelled', 'budget_exhausted')),
            phase text not null default '',
            progress double precision not null default 0,
            budget jsonb not null,
            scope jsonb not null,
            seeds jsonb not null default '[]',
            tlp text not null default 'clear',
            tokens bigint not null default 0,
            cancel_requested boolean not null default false,
            error text not null default '',
            report jsonb,
            created_at timestamptz not null default now(),
            started_at timestamptz,
            finished_at timestamptz
        )
    """)
    op.execute("create index investigations_newest on swarm.investigations (created_at desc, id desc)")
    op.execute("""
        create table swarm.evidence (
            id text primary key,
            investigation_id text not null references swarm.investigations (id) on delete cascade,
            kind text not null,
            uri text not null default '',
            collector text not null default '',
            collected_at timestamptz not null,
            tlp text not null default 'clear',
            content text not null,
            document_id text not null default '',
            start_offset integer not null default 0,
            end_offset integer not null default 0,
            data jsonb not null default '{}',
            created_at timestamptz not null default now()
        )
    """)
    op.execute("create index evidence_by_investigation on swarm.evidence (investigation_id, created_at)")
    op.execute("""
        create table swarm.tool_calls (
            investigation_id text not null references swarm.investigations (id) on delete cascade,
            key text not null,
            tool text not null,
            args jsonb not null,
            agent text not null,
            status text not null default 'running',
            error text not null default '',
            result jsonb,  -- what the call returned, so a re-run step reuses it instead of calling again
            started_at timestamptz not null default now(),
            finished_at timestamptz,
            primary key (investigation_id, key)
        )
    """)
    op.execute("""
        create table swarm.events (
            id bigserial primary key,
            investigation_id text not null references swarm.investigations (id) on delete cascade,
            kind text not null,
            at timestamptz not null default clock_timestamp(),
            data jsonb not null
        )
    """)
    op.execute("create index events_by_investigation on swarm.events (investigation_id, id)")
    op.execute("""
        create table swarm.agents (
            investigation_id text not null references swarm.investigations (id) on delete cascade,
            agent text not null,
            role text not null,
            activity text not null,
            since timestamptz not null default now(),
            instance text not null,
            primary key (investigation_id, agent)
        )
    """)
    op.execute("""
        create table swarm.replicas (
            instance text primary key,
            node text not null,
            heartbeat_at timestamptz not null default now()
        )
    """)


def downgrade() -> None:
    for table in ("replicas", "agents", "events", "tool_calls", "evidence", "investigations"):
        op.execute(f"drop table swarm.{table}")
