"""The NATS connection every process shares: fail fast at start with one line, reconnect forever after."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NatsClient

from bev.settings import NatsSettings
from bev.telemetry import get_logger

log = get_logger(__name__)


class BusUnavailable(Exception):
    """NATS could not be reached at start; str() is one line naming the address and the cause."""


async def connect_nats(settings: NatsSettings, name: str, user: str = "", password: str = "") -> NatsClient:
    last_error: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        # nats-py's default callback prints a traceback per attempt; one line is enough.
        last_error[:] = [exc]
        log.warning("nats error", error=f"{type(exc).__name__}: {exc}")

    connection: list[NatsClient] = []

    async def on_disconnect() -> None:
        if connection and not (connection[0].is_closed or connection[0].is_draining):
            log.warning("nats disconnected; reconnecting", url=settings.url)

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=settings.url)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                settings.url,
                name=name,
                user=user or settings.user or None,
                password=password or settings.password or None,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
            ),
            timeout=settings.connect_timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = last_error[0] if last_error else exc
        raise BusUnavailable(
            f"NATS at {settings.url} is unreachable after {settings.connect_timeout_s:.0f}s "
            f"({type(cause).__name__}: {cause or 'no answer'}); start it or set BEV_NATS__URL"
        ) from exc
    connection.append(nc)
    return nc
