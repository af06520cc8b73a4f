"""Fixtures for the embeddings service and the corpus: the real MiniLM model, loaded once per
session, and fresh PostgreSQL databases (with pgvector) on the session's postgres_server."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from bev.engines import Postgres

if TYPE_CHECKING:
    from services.embeddings.model import SentenceEmbedder

__all__ = ["fresh_database", "minilm"]


@pytest.fixture(scope="session")
def minilm() -> SentenceEmbedder:
    """all-MiniLM-L6-v2 from its packaged weights (offline), on CUDA when present."""
    from services.embeddings.model import SentenceEmbedder

    return SentenceEmbedder.load()


@pytest.fixture(scope="session")
def fresh_database(postgres_server: Postgres) -> Iterator[Callable[[], str]]:
    """Call it for the DSN of a new, empty database with pgvector; all are dropped at session end."""
    created: list[str] = []

    def create() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        dsn = urllib.parse.urlsplit(postgres_server.dsn)._replace(path=f"/{name}").geturl()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension if not exists vector")
        return dsn

    yield create
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
