"""Fixtures of the reasoning service (registered in the repository's conftest.py): real llama.cpp
servers, an engine that fails on demand, and the service itself over NATS in front of them.

`llama_servers`: two real llama.cpp OpenAI servers (SmolLM2), one per session, one thread each.
`flaky_engine`: a local OpenAI-protocol server in front of the first of them. It forwards requests
to the real engine, or fails the way engines fail (HTTP 500, a hang, a dropped connection halfway
through a stream), and serves a /metrics page in vLLM's exposition format with load figures the
test sets, so vLLM's load reporting is exercised without a GPU.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from nats.aio.client import Client as NatsClient

from bev.engines import NatsServer, free_port
from bev.engines.llama_server import LlamaServer
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from bev.vocab import Tier
from services.reasoning.servicer import Reasoning, assemble
from services.reasoning.settings import BackendConfig, EmbeddedLlamaConfig, ReasoningConfig

Mode = Literal["forward", "error", "hang", "break_stream"]

# The families vLLM 0.11 exports for load (recorded from a running `vllm serve`, trimmed).
VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{model}"}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{model}"}} {kv}
"""


class FlakyEngine:
    """Serves the OpenAI API at `base_url` as model `model`; `mode` says how it answers."""

    def __init__(self, upstream: LlamaServer, model: str = "flaky") -> None:
        self.upstream = upstream
        self.model = model
        self.mode: Mode = "forward"
        self.waiting = 0.0
        self.kv_cache_usage = 0.0
        self.chat_requests = 0
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off"))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            if self.mode == "error":
                return JSONResponse({"error": {"message": "engine is restarting"}}, status_code=503)  # type: ignore[return-value]
            return {"object": "list", "data": [{"id": self.model, "object": "model", "max_model_len": 4096}]}

        @app.get("/metrics")
        async def metrics() -> Response:
            text = VLLM_METRICS.format(model=self.model, running=1, waiting=self.waiting, kv=self.kv_cache_usage)
            return Response(text, media_type="text/plain; version=0.0.4")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self.chat_requests += 1
            body = await request.json()
            if self.mode == "error":
                return JSONResponse({"error": {"message": "CUDA out of memory"}}, status_code=500)
            if self.mode == "hang":
                await asyncio.sleep(3600)
            body["model"] = self.upstream.model_alias
            body.pop("stream_options", None)
            if body.get("response_format", {}).get("type") == "json_schema":  # vLLM's form -> llama.cpp's
                body["response_format"] = {"type": "json_object",
                                           "schema": body["response_format"]["json_schema"]["schema"]}
            if not body.get("stream"):
                async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
                    upstream = await client.post(f"{self.upstream.base_url}/chat/completions", json=body)
                return Response(upstream.content, status_code=upstream.status_code,
                                media_type="application/json")
            return StreamingResponse(self._relay(body), media_type="text/event-stream")

        return app

    async def _relay(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        events = 0
        async with (httpx.AsyncClient(trust_env=False, timeout=120) as client,
                    client.stream("POST", f"{self.upstream.base_url}/chat/completions", json=body) as upstream):
            async for line in upstream.aiter_lines():
                if self.mode == "break_stream" and events == 3:
                    raise ConnectionResetError("engine died mid-stream")  # uvicorn drops the connection
                if line.startswith("data:"):
                    events += 1
                yield (line + "\n").encode()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name=f"flaky-engine-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"flaky engine did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True  # a hanging request must not hold the shutdown
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture(scope="session")
def llama_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaServer, LlamaServer]]:
    """Two real llama.cpp servers with SmolLM2, one thread each (the machine has two cores)."""
    first = LlamaServer(tmp_path_factory.mktemp("llama-a"), n_threads=1)
    second = LlamaServer(tmp_path_factory.mktemp("llama-b"), n_threads=1)
    with first, second:
        yield first, second


@pytest.fixture
def flaky_engine(llama_servers: tuple[LlamaServer, LlamaServer]) -> Iterator[FlakyEngine]:
    engine = FlakyEngine(llama_servers[0])
    engine.start()
    yield engine
    engine.stop()


def llama_backends(servers: tuple[LlamaServer, ...]) -> list[BackendConfig]:
    """The fast tier as the session's llama.cpp servers, configured as the service would route them."""
    return [BackendConfig(name=f"llama.cpp-{index}", tier=Tier.FAST, url=server.base_url, model=server.model_alias,
                          kind="llamacpp", max_in_flight=1, max_queued=32, node="local", context_length=server.n_ctx)
            for index, server in enumerate(servers)]


@dataclass
class ReasoningOnNats:
    servicer: Reasoning
    client: ReasoningClient  # over NATS, like every other service
    nc: NatsClient  # the caller's connection


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def reasoning_on_nats(nats_server: NatsServer, llama_servers: tuple[LlamaServer, LlamaServer],
                            tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReasoningOnNats]:
    """The reasoning service over NATS in this process, routing over the session's llama.cpp servers."""
    config = ReasoningConfig(embedded=EmbeddedLlamaConfig(enabled=False))  # the session's llama servers stand in for it
    servicer = await assemble(InstanceInfo(service="reasoning"), config, llama_backends(llama_servers), {},
                              tmp_path_factory.mktemp("reasoning"))
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60) as nc:
        yield ReasoningOnNats(servicer, ReasoningClient.over_nats(nc, timeout_s=300), nc)
