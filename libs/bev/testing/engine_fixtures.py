"""Session-scoped pytest fixtures that run the real embedded engines on free ports.

Each engine starts once per test session (the slow part is process start, not the tests), in its
own temporary data directory, and is stopped at teardown. Tests that need a clean slate use
their own names (stream, table, key, graph) rather than a fresh server.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from bev.engines import FalkorDB, NatsServer, OpenBao, Postgres, Redis

__all__ = ["falkordb_server", "fresh_database", "nats_server", "openbao_server", "postgres_server", "redis_server"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """nats-server with JetStream and no auth."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """PostgreSQL with pgvector; fsync off, since test data need not survive a power cut."""
    with Postgres(tmp_path_factory.mktemp("postgres"), fsync=False) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with Redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def falkordb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalkorDB]:
    with FalkorDB(tmp_path_factory.mktemp("falkordb")) as server:
        yield server


@pytest.fixture(scope="session")
def openbao_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    with OpenBao(tmp_path_factory.mktemp("openbao")) as server:
        yield server


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
