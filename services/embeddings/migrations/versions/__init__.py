"""Alembic revisions of the corpus schema, applied by services.embeddings.schema.migrate()."""
