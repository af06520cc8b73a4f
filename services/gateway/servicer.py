"""Gateway: serves the HTTP API (uvicorn, in this process) and answers Health on the bus.

Its Vault secrets: postgres (API keys and the audit log, schema `access`), redis (per-key limits)
and `gateway`: `pepper` (the HMAC key API keys are stored under) and, in the embedded fleet,
`bootstrap_key` (an admin key the supervisor also writes to run/fleet.json as `api_key`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import BlockingConnectionPool, Redis

from bev import access
from bev.access import AuditLog, InvalidKeyRequest, KeyStore
from bev.gateway.v1.gateway_rpc import GatewayServicer
from bev.manifest import ManifestError, load_manifest
from bev.migrations import DatabaseUnavailable
from bev.runtime import ServiceRuntime, StartupError
from bev.vocab import Tlp
from services.gateway.api import create_app
from services.gateway.clients import ClientsMismatch
from services.gateway.guard import Guard
from services.gateway.http_server import GatewayServer, server_config
from services.gateway.limits import Limits
from services.gateway.settings import Settings


class Gateway(GatewayServicer):
    def __init__(self, runtime: ServiceRuntime[Settings], callees: Iterable[str], guard: Guard) -> None:
        super().__init__(runtime.info)
        config = runtime.settings.gateway
        self.app = create_app(runtime.nc, config, callees, guard)
        self._server = GatewayServer(server_config(self.app, config))
        self._task: asyncio.Task[None] | None = None
        self._guard = guard

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                config = self._server.config
                raise StartupError(f"gateway could not listen on {config.host}:{config.port} (port in use?)")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        await close_guard(self._guard)


async def _pool(dsn: str) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = AsyncConnectionPool(dsn, min_size=1, max_size=8, open=False)
    await pool.open(wait=True, timeout=15)
    return pool


async def make_guard(dsn: str, redis_url: str, pepper: str, nc: NatsClient | None, cache_s: float = 5.0) -> Guard:
    """The guard over PostgreSQL (keys, audit; schema migrated first) and Redis (limits)."""
    try:
        await asyncio.to_thread(access.migrate, dsn)
    except DatabaseUnavailable as exc:
        raise StartupError(str(exc)) from None
    pool = await _pool(dsn)
    publish = None
    if nc is not None:
        async def publish_on(subject: str, body: bytes) -> None:
            await nc.publish(subject, body)
        publish = publish_on
    # A blocking pool: a burst of requests waits for a connection instead of failing.
    redis = Redis(connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=10))
    return Guard(KeyStore(pool, pepper), Limits(redis), AuditLog(pool), publish, cache_s)


async def close_guard(guard: Guard) -> None:
    await guard.drain()
    await guard.limits.redis.aclose()
    await guard.keys.pool.close()


@asynccontextmanager
async def open_guard(dsn: str, redis_url: str, pepper: str, nc: NatsClient | None,
                     cache_s: float = 5.0) -> AsyncIterator[Guard]:
    guard = await make_guard(dsn, redis_url, pepper, nc, cache_s)
    try:
        yield guard
    finally:
        await close_guard(guard)


async def build(runtime: ServiceRuntime[Settings]) -> Gateway:
    read = runtime.secrets.read
    postgres, redis, own = await asyncio.gather(*(asyncio.to_thread(read, name)
                                                  for name in ("postgres", "redis", "gateway")))
    if not postgres.get("dsn") or not redis.get("url"):
        raise StartupError("Vault secrets 'postgres' (dsn) and 'redis' (url) are needed: the gateway keeps "
                           "API keys and the audit log in PostgreSQL and its rate limits in Redis")
    if len(own.get("pepper", "")) < 16:
        raise StartupError("Vault secret 'gateway' needs a 'pepper' of at least 16 characters (API keys are "
                           "stored as an HMAC under it); generate one with `openssl rand -base64 32`")
    config = runtime.settings.gateway
    guard = await make_guard(postgres["dsn"], redis["url"], own["pepper"], runtime.nc, config.key_cache_s)
    try:
        if own.get("bootstrap_key"):
            await guard.keys.ensure(own["bootstrap_key"], "fleet bootstrap (run/fleet.json)", ["admin"],
                                    config.bootstrap_team, Tlp.RED)
        callees = load_manifest().callees("gateway")
        return Gateway(runtime, callees, guard)
    except (ManifestError, ClientsMismatch, InvalidKeyRequest) as exc:
        await close_guard(guard)
        raise StartupError(str(exc)) from None
