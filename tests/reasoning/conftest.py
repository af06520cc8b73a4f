"""The gateway's HTTP API on a free port in front of the reasoning service (services.reasoning.testing's
`reasoning_on_nats`, over two real llama.cpp servers): the path an analyst's request takes, API key
and all (keys in a real PostgreSQL, limits in a real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest_asyncio

from bev.engines import Redis
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port
from services.reasoning.servicer import Reasoning
from services.reasoning.testing import ReasoningOnNats


@dataclass
class Stack:
    reasoning: Reasoning
    client: ReasoningClient     # over NATS, like every other service
    gateway: GatewayUnderTest   # the gateway's HTTP API: its base URL and an admin key


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def reasoning_stack(reasoning_on_nats: ReasoningOnNats, fresh_database: Callable[[], str],
                          redis_server: Redis) -> AsyncIterator[Stack]:
    async with gateway_on_free_port(reasoning_on_nats.nc, fresh_database(), redis_server.url) as gateway:
        yield Stack(reasoning_on_nats.servicer, reasoning_on_nats.client, gateway)
