"""API keys (stored as an HMAC of the secret, never the secret) and the audit log of the gateway.

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
        create table access.api_keys (
            id text primary key,
            name text not null,
            team text not null,
            scopes text[] not null check (scopes <@ array['read', 'write', 'admin'] and cardinality(scopes) > 0),
            max_tlp text not null check (max_tlp in ('clear', 'green', 'amber', 'amber+strict', 'red')),
            secret_hmac bytea not null,
            requests_per_hour integer not null check (requests_per_hour > 0),
            tokens_per_day integer not null check (tokens_per_day > 0),
            created_at timestamptz not null default now(),
            created_by text not null default '',
            expires_at timestamptz,
            revoked_at timestamptz
        )
    """)
    op.execute("create index api_keys_by_team on access.api_keys (team, id)")
    op.execute("""
        create table access.audit (
            id bigserial primary key,
            at timestamptz not null default now(),
            key_id text not null,
            team text not null,
            method text not null,
            route text not null,
            path text not null,
            object_id text not null,
            status integer not null,
            trace_id text not null,
            client text not null
        )
    """)
    op.execute("create index audit_by_key on access.audit (key_id, id)")
    op.execute("create index audit_by_team on access.audit (team, id)")


def downgrade() -> None:
    op.execute("drop table access.audit")
    op.execute("drop table access.api_keys")
