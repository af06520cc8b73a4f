"""The reasoning service over NATS in this process, in front of two real llama.cpp servers, and the
gateway's HTTP API on a free port in front of it: the path an analyst's request takes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest_asyncio
import uvicorn

from bev.engines import NatsServer, free_port
from bev.engines.llama_server import LlamaServer
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.rpc.nats_transport import NatsRpcServer
from services.gateway.api import create_app
from services.gateway.settings import GatewayConfig
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
    server_nc = await nats.connect(nats_server.url)
    client_nc = await nats.connect(nats_server.url)
    on_nats = NatsRpcServer(server_nc, servicer, max_request_bytes=4 * 1024 * 1024, default_timeout_s=60,
                            max_concurrency=64, instance=servicer.info.instance)
    await servicer.start()
    await on_nats.start()
    port = free_port()
    gateway = uvicorn.Server(uvicorn.Config(create_app(client_nc, GatewayConfig(rpc_timeout_s=120)),
                                            host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(gateway.serve())
    while not gateway.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    yield Stack(servicer, ReasoningClient.over_nats(client_nc, timeout_s=300), f"http://127.0.0.1:{port}")
    gateway.should_exit = True
    await serving
    await on_nats.stop()
    await servicer.close()
    await client_nc.close()
    await server_nc.close()
