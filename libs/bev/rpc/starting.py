"""Calls that wait out a service that is not serving yet.

While a fleet starts, or restarts after `bev up` was stopped, services come up in no set order: a
call can find no instance of the service it needs for a few seconds. A caller whose work would be
lost or recorded as failed by that (an investigation's tool call, a collector handing its page to
the corpus) waits, in growing steps, and calls again; any other error, or the last wait spent,
raises as it is. The waits add up to 80 s, within the deadlines of the calls that use them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from bev.rpc.errors import RpcError, StatusCode
from bev.telemetry import get_logger

log = get_logger(__name__)

T = TypeVar("T")

NO_INSTANCE = "no instance is serving"  # how the NATS transport says nobody answers a subject
STARTING_WAITS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 20.0)


def not_serving_yet(exc: RpcError) -> bool:
    """The error says no instance of the service answered (not that one answered with an error)."""
    return exc.code == StatusCode.UNAVAILABLE and exc.message.startswith(NO_INSTANCE)


async def while_starting(run: Callable[[], Awaitable[T]], waits: Sequence[float] = STARTING_WAITS_S) -> T:
    """`run()`, called again after each of `waits` while it finds no instance serving."""
    for wait in (*waits, None):
        try:
            return await run()
        except RpcError as exc:
            if wait is None or not not_serving_yet(exc):
                raise
            log.info("a service is not serving yet; waiting", error=exc.message, wait_s=wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
