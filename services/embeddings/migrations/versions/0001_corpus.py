"""The corpus: documents, chunks with offsets and a full-text tsvector, embeddings per model.

Vectors of every model share one `vector` column (no fixed dimension); each model gets its own
partial HNSW index on `embedding::vector(<dims>)` when the service starts with it
(services.embeddings.vector_index.PgVectorIndex.prepare), because which models run is
configuration, not schema.

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
    op.execute("create extension if not exists vector")
    op.execute("""
        create table corpus.documents (
            id uuid primary key,
            content_hash text not null unique,
            title text not null,
            uri text not null default '',
            source text not null default '',
            media_type text not null,
            tlp text not null default 'clear',
            investigation_id text not null default '',
            collected_at timestamptz not null,
            ingested_at timestamptz not null default now(),
            text text not null
        )
    """)
    op.execute("create index documents_source on corpus.documents (source)")
    op.execute("create index documents_collected_at on corpus.documents (collected_at)")
    op.execute("create index documents_investigation on corpus.documents (investigation_id) where investigation_id <> ''")
    op.execute("""
        create table corpus.chunks (
            id uuid primary key,
            document_id uuid not null references corpus.documents (id) on delete cascade,
            seq integer not null,
            start_offset integer not null,
            end_offset integer not null,
            text text not null,
            tsv tsvector generated always as (to_tsvector('english', text)) stored,
            unique (document_id, seq),
            check (0 <= start_offset and start_offset < end_offset)
        )
    """)
    op.execute("create index chunks_tsv on corpus.chunks using gin (tsv)")
    op.execute("""
        create table corpus.chunk_embeddings (
            chunk_id uuid not null references corpus.chunks (id) on delete cascade,
            model text not null,
            embedding vector not null,
            primary key (chunk_id, model)
        )
    """)


def downgrade() -> None:
    op.execute("drop table corpus.chunk_embeddings")
    op.execute("drop table corpus.chunks")
    op.execute("drop table corpus.documents")
