"""Session-scoped pytest fixtures that run the real embedded engines on free ports.

Each engine starts once per test session (the slow part is process start, not the tests), in its
own temporary data directory, and is stopped at teardown. Tests that need a clean slate use
their own names (stream, table, key, graph) rather than a fresh server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bev.engines import FalkorDB, NatsServer, OpenBao, Postgres, Redis

__all__ = ["falkordb_server", "nats_server", "openbao_server", "postgres_server", "redis_server"]


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
