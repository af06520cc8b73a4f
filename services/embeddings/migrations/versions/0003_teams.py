"""Per-team documents and ingest jobs.

`team` is the team whose key uploaded a document (or submitted a job); '' is the shared corpus
(what the collectors gather and the feeds bring, or an admin's upload), readable by every team.
Existing rows are shared.

Deduplication no longer spans the whole corpus: the same text stored by another team, or at a label
its reader may not read, must not answer with that document's id (the id alone would tell that the
text is there). A duplicate is now a document of the same team with the same normalised text at a
label no higher than the new one's (services.embeddings.corpus.Corpus.find_duplicate), so the
unique key that settles concurrent inserts is (team, content_hash, tlp).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter table corpus.documents add column team text not null default ''")
    op.execute("alter table corpus.documents drop constraint documents_content_hash_key")
    # Also the index a duplicate is looked up by: (team, content_hash) is its prefix.
    op.execute("create unique index documents_dedup on corpus.documents (team, content_hash, tlp)")
    op.execute("alter table corpus.ingest_jobs add column team text not null default ''")


def downgrade() -> None:
    # Fails while two teams (or two labels) hold the same text: delete one copy first.
    op.execute("alter table corpus.ingest_jobs drop column team")
    op.execute("drop index corpus.documents_dedup")
    op.execute("alter table corpus.documents add constraint documents_content_hash_key unique (content_hash)")
    op.execute("alter table corpus.documents drop column team")
