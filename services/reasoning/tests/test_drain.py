"""Draining a backend from a replica's router (DrainBackend), against real llama.cpp servers: new
requests go elsewhere or to a lower tier, requests in flight finish, a drain ends by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from bev.engines import NatsServer
from bev.engines.llama_server import LlamaServer
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.rpc.nats_transport import NatsTransport
from bev.testing.serving import serving_on_nats
from bev.vocab import Tier
from services.reasoning.backends import Backend, ChatParams
from services.reasoning.router import Router
from services.reasoning.servicer import assemble, http_client
from services.reasoning.settings import BackendConfig, EmbeddedLlamaConfig, ReasoningConfig

HI = ChatParams(messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = http_client()
    yield client
    await client.aclose()


def config_of(server: LlamaServer, name: str, tier: Tier = Tier.FAST) -> BackendConfig:
    return BackendConfig(name=name, tier=tier, url=server.base_url, model=server.model_alias, kind="llamacpp",
                         max_in_flight=1, max_queued=8, context_length=server.n_ctx)


async def router_of(http: httpx.AsyncClient, *configs: BackendConfig) -> Router:
    router = Router([Backend(c, http, request_timeout_s=60) for c in configs], Tier.FAST)
    await router.probe_all()
    assert all(b.healthy for b in router.backends)
    return router


def drained_gauge(name: str, tier: str = "fast") -> float | None:
    return REGISTRY.get_sample_value("bev_reasoning_backend_drained", {"tier": tier, "backend": name})


async def test_a_drained_backend_gets_no_new_requests_and_its_running_one_finishes(
        llama_servers: tuple[LlamaServer, LlamaServer], http: httpx.AsyncClient) -> None:
    router = await router_of(http, config_of(llama_servers[0], "drain-a"), config_of(llama_servers[1], "drain-b"))
    a, b = router.backends
    story = ChatParams(messages=[{"role": "user", "content": "Tell a story."}], max_tokens=24)
    stream = router.stream(story)
    first, routed = await anext(stream)
    assert routed.backend is a  # equal load and requests: table order decides

    router.drain("drain-a", 60, "p99 latency 40 s")
    assert a.drained() and drained_gauge("drain-a") == 1 and drained_gauge("drain-b") == 0
    served = [routed.backend.name for _, routed in [await router.complete(HI) for _ in range(3)]]
    assert served == ["drain-b"] * 3
    # the answer that was running on it when it was drained goes on to its end
    rest = [delta async for delta, _ in stream]
    assert rest[-1].finish_reason and rest[-1].completion_tokens > 1 and first.text
    assert a.requests == 1 and b.requests == 3

    # with a session pinned to it, the session moves too
    router.drain("drain-a", 0, "")
    _, pinned = await router.complete(HI, session_id="inv-drain")
    router.drain(pinned.backend.name, 60, "maintenance")
    _, moved = await router.complete(HI, session_id="inv-drain")
    assert moved.backend.name != pinned.backend.name and router.pinned("inv-drain") == moved.backend.name


async def test_a_tier_whose_only_backend_is_drained_falls_back_or_is_unavailable(
        llama_servers: tuple[LlamaServer, LlamaServer], http: httpx.AsyncClient) -> None:
    router = await router_of(http, config_of(llama_servers[0], "drain-balanced", Tier.BALANCED),
                             config_of(llama_servers[1], "drain-fast"))
    router.drain("drain-balanced", 60, "error ratio 0.4")
    _, routed = await router.complete(HI, tier=Tier.BALANCED)
    assert routed.backend.name == "drain-fast" and routed.fell_back and router.tier_fallbacks == 1
    assert router.failovers == 0  # nothing was tried on the drained backend

    router.drain("drain-fast", 60, "queue backlog")
    with pytest.raises(RpcError) as unavailable:
        await router.complete(HI, tier=Tier.BALANCED)
    assert unavailable.value.code == StatusCode.UNAVAILABLE
    message = unavailable.value.message
    assert message.startswith("nothing can serve tier balanced or lower: drain-balanced: drained until ")
    assert ": error ratio 0.4; drain-fast: drained until " in message and message.endswith(": queue backlog")
    with pytest.raises(RpcError) as streamed:
        _ = [delta async for delta in router.stream(HI)]
    assert streamed.value.code == StatusCode.UNAVAILABLE and "queue backlog" in streamed.value.message

    router.drain("drain-fast", 0, "")  # undrained: back in routing at once
    _, routed = await router.complete(HI, tier=Tier.BALANCED)
    assert routed.backend.name == "drain-fast" and not router.backends[1].drained()


async def test_a_drain_ends_by_itself(llama_servers: tuple[LlamaServer, LlamaServer],
                                      http: httpx.AsyncClient) -> None:
    router = await router_of(http, config_of(llama_servers[0], "drain-brief"))
    backend = router.backends[0]
    router.drain("drain-brief", 0.5, "a short pause")
    assert backend.drained_until > 0 and backend.drained_reason == "a short pause"
    assert drained_gauge("drain-brief") == 1
    with pytest.raises(RpcError) as unavailable:
        await router.complete(HI)
    assert "drain-brief: drained until" in unavailable.value.message
    await asyncio.sleep(0.6)
    # nobody undrained it: the gauge, the status fields and routing read the expiry themselves
    assert drained_gauge("drain-brief") == 0
    assert (backend.drained_until, backend.drained_reason, backend.drain_text()) == (0.0, "", "")
    _, routed = await router.complete(HI)
    assert routed.backend is backend


async def test_drain_backend_rpc(nats_server: NatsServer, llama_servers: tuple[LlamaServer, LlamaServer],
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    config = ReasoningConfig(embedded=EmbeddedLlamaConfig(enabled=False))
    backends = [config_of(llama_servers[0], "rpc-a"), config_of(llama_servers[1], "rpc-b")]
    servicer = await assemble(InstanceInfo(service="reasoning"), config, backends, {},
                              tmp_path_factory.mktemp("reasoning-drain"))
    async with serving_on_nats(servicer, nats_server.url) as nc:
        # Addressed to this replica: other tests' reasoning services share the session's bus.
        client = ReasoningClient(NatsTransport(nc, instance=servicer.info.instance), timeout_s=60)
        drained = await client.DrainBackend(reasoning_pb2.DrainBackendRequest(
            backend="rpc-a", seconds=120, reason="monitoring: latency anomaly"))
        assert drained.backend.name == "rpc-a" and drained.backend.healthy
        assert drained.backend.drained_reason == "monitoring: latency anomaly"
        status = {b.name: b for b in (await client.RouterStatus(reasoning_pb2.RouterStatusRequest())).backends}
        assert status["rpc-a"].drained_until == pytest.approx(drained.backend.drained_until)
        assert status["rpc-a"].drained_until == pytest.approx(time.time() + 120, abs=10)
        assert (status["rpc-b"].drained_until, status["rpc-b"].drained_reason) == (0, "")
        health = await servicer.health_checks()
        assert [c.ok for c in health] == [True, True]
        assert "drained until" in health[0].detail and "monitoring: latency anomaly" in health[0].detail

        answers = [await client.Chat(reasoning_pb2.ChatRequest(
            messages=[reasoning_pb2.ChatMessage(role="user", content="Say hi.")], max_tokens=4)) for _ in range(2)]
        assert [a.backend for a in answers] == ["rpc-b", "rpc-b"]

        undrained = await client.DrainBackend(reasoning_pb2.DrainBackendRequest(backend="rpc-a", seconds=0))
        assert (undrained.backend.drained_until, undrained.backend.drained_reason) == (0, "")
        assert drained_gauge("rpc-a") == 0

        with pytest.raises(RpcError) as unknown:
            await client.DrainBackend(reasoning_pb2.DrainBackendRequest(backend="vllm-powerful", seconds=60))
        assert unknown.value.code == StatusCode.NOT_FOUND
        assert unknown.value.message == "no backend named 'vllm-powerful'; known: rpc-a, rpc-b"
        with pytest.raises(RpcError) as negative:
            await client.DrainBackend(reasoning_pb2.DrainBackendRequest(backend="rpc-a", seconds=-1))
        assert negative.value.code == StatusCode.INVALID_ARGUMENT
        assert negative.value.message == "seconds must be 0 (undrain) or more, not -1.0"
        assert not servicer.router.backends[0].drained()
