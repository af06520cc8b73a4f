"""Alembic migrations of the corpus schema; a package so that non-editable installs (the Docker image) ship them."""
