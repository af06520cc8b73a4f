"""BEV's pytest plugin (registered through the `pytest11` entry point): the engine fixtures.

Engines (NATS, PostgreSQL+pgvector, Redis, FalkorDB, OpenBao) start once per session on free
ports. `--bev-live DATA_DIR` points fleet tests at an already running fleet (`bev up --data-dir
DATA_DIR`) instead of starting one. Fixtures of one service live next to it
(`services/<name>/testing.py`, listed in the repository's conftest.py). Nothing here changes
global state when pytest starts: tracing is set up by the `tracer_provider` fixture, for the
tests that ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.engines import NatsServer
from bev.telemetry import ensure_tracer_provider
from bev.testing import engine_fixtures


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bev-live", metavar="DATA_DIR", default=None,
                     help="run fleet tests against the fleet started with `bev up --data-dir DATA_DIR`")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(engine_fixtures, "bev.engines")
    config.addinivalue_line("markers", "slow: starts the whole fleet or runs a model (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def tracer_provider() -> None:
    """The OpenTelemetry provider a service sets up, so spans in this process carry trace ids."""
    ensure_tracer_provider()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()
