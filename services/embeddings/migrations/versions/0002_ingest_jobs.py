"""Ingest jobs: uploads stored durably (content included) and worked on asynchronously.

SubmitIngest inserts a row (status `queued`) and answers; the service's workers, in every replica,
claim rows with `select ... for update skip locked` and hold them under a lease (`lease_until`) that
they renew while working. A row whose lease has run out (its worker died) is claimed again and
resumed: `document_id` is recorded in the transaction that stores the document and its chunks, and
`chunks_done` counts the chunks whose vectors are stored, so a second attempt neither stores the
document twice nor embeds again what was already indexed. The content is cleared once the job ends.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        create table corpus.ingest_jobs (
            id uuid primary key,
            status text not null default 'queued'
                check (status in ('queued', 'running', 'completed', 'failed')),
            content bytea not null,
            bytes bigint not null,
            media_type text not null,
            filename text not null default '',
            title text not null default '',
            uri text not null default '',
            source text not null default '',
            tlp text not null default 'clear',
            investigation_id text not null default '',
            collected_at timestamptz,
            claimed_by text not null default '',
            lease_until timestamptz,
            attempts integer not null default 0,
            chunks_done integer not null default 0,
            chunks_total integer not null default 0,
            document_id uuid,
            duplicate boolean not null default false,
            document_title text not null default '',
            error text not null default '',
            created_at timestamptz not null default now(),
            started_at timestamptz,
            updated_at timestamptz not null default now(),
            finished_at timestamptz
        )
    """)
    # What workers scan: unfinished jobs, oldest first.
    op.execute("create index ingest_jobs_open on corpus.ingest_jobs (created_at) "
               "where status in ('queued', 'running')")
    op.execute("create index ingest_jobs_finished on corpus.ingest_jobs (finished_at) where finished_at is not null")


def downgrade() -> None:
    op.execute("drop table corpus.ingest_jobs")
