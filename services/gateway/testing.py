"""The gateway's HTTP API inside a test, in front of servicers the test serves on NATS: the path an
analyst's request takes, over real HTTP on a free port, behind the real guard (API keys in a real
PostgreSQL, limits in a real Redis)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient

from bev.access import KeyStore
from bev.engines import free_port
from bev.manifest import load_manifest
from bev.vocab import Tlp
from services.gateway.api import create_app
from services.gateway.http_server import GatewayServer, server_config
from services.gateway.servicer import open_guard
from services.gateway.settings import GatewayConfig


@dataclass
class GatewayUnderTest:
    url: str
    admin_key: str  # a key with every scope, team "admin", cleared for TLP:RED
    keys: KeyStore

    def auth(self, key: str | None = None) -> dict[str, str]:
        """The Authorization header for `key` (default: the admin key)."""
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def new_key(self, scopes: Iterable[str] = ("read", "write"), team: str = "team-a", *,
                      max_tlp: Tlp = Tlp.RED, **options: Any) -> str:
        """A new key (the whole key, as a client sends it)."""
        _, whole = await self.keys.create(f"test {team}", scopes, team, max_tlp=max_tlp, **options)
        return whole


@asynccontextmanager
async def gateway_on_free_port(nc: NatsClient, dsn: str, redis_url: str,
                               config: GatewayConfig | None = None) -> AsyncIterator[GatewayUnderTest]:
    """The gateway's HTTP API over `nc`, served as the gateway service serves it (guard and
    slow-client deadlines included), with the clients its manifest entry declares."""
    config = (config or GatewayConfig()).model_copy(update={"host": "127.0.0.1", "port": free_port()})
    async with open_guard(dsn, redis_url, secrets.token_urlsafe(24), nc) as guard:
        _, admin_key = await guard.keys.create("test admin", ["admin"], "admin", max_tlp=Tlp.RED,
                                                   requests_per_hour=1_000_000, tokens_per_day=10_000_000)
        app = create_app(nc, config, load_manifest().callees("gateway"), guard)
        server = GatewayServer(server_config(app, config))
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.02)
        try:
            yield GatewayUnderTest(f"http://127.0.0.1:{config.port}", admin_key, guard.keys)
        finally:
            server.should_exit = True
            await task
