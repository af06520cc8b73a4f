"""The reasoning service over NATS in this process, in front of two real llama.cpp servers, and the
gateway's HTTP API on a free port in front of it: the path an analyst's request takes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from bev.engines import NatsServer
from bev.engines.llama_server import LlamaServer
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.testing.serving import gateway_on_free_port, serving_on_nats
from services.reasoning.backends import Backend
from services.reasoning.router import Router
from services.reasoning.servicer import Reasoning, http_client
from services.reasoning.settings import BackendConfig, ReasoningConfig


@dataclass
class Stack:
    reasoning: Reasoning
    client: ReasoningClient  # over NATS, like every other service
    gateway: str             # base URL of the gateway's HTTP API


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def reasoning_stack(nats_server: NatsServer,
                          llama_servers: tuple[LlamaServer, LlamaServer]) -> AsyncIterator[Stack]:
    config = ReasoningConfig(embedded={"enabled": False})  # the session's llama servers stand in for it
    http = http_client()
    backends = [
        Backend(BackendConfig(name=f"llama.cpp-{index}", tier="fast", url=server.base_url, model=server.model_alias,
                              kind="llamacpp", max_in_flight=1, max_queued=32, node="local",
                              context_length=server.n_ctx), http)
        for index, server in enumerate(llama_servers)
    ]
    router = Router(backends, "fast")
    await router.probe_all()
    servicer = Reasoning(InstanceInfo(service="reasoning"), config, router, http)
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60) as nc, \
            gateway_on_free_port(nc, rpc_timeout_s=120) as gateway:
        yield Stack(servicer, ReasoningClient.over_nats(nc, timeout_s=300), gateway)
