"""Router decisions against real llama.cpp servers (SmolLM2) and an engine that fails on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from bev.engines import free_port
from bev.engines.llama_server import LlamaServer
from bev.rpc import RpcError, StatusCode
from bev.vocab import Tier
from services.reasoning.backends import Backend, ChatParams, Delta, vllm_load
from services.reasoning.router import Router
from services.reasoning.servicer import http_client
from services.reasoning.settings import BackendConfig
from services.reasoning.testing import FlakyEngine, Mode

HI = ChatParams(messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = http_client()
    yield client
    await client.aclose()


def llama(server: LlamaServer, name: str, http: httpx.AsyncClient, tier: Tier = Tier.FAST, **limits: Any) -> Backend:
    config = BackendConfig(name=name, tier=tier, url=server.base_url, model=server.model_alias, kind="llamacpp",
                           **limits)
    return Backend(config, http, request_timeout_s=30)


def flaky(engine: FlakyEngine, http: httpx.AsyncClient, tier: Tier = Tier.FAST, timeout_s: float = 30) -> Backend:
    config = BackendConfig(name="vllm-like", tier=tier, url=engine.base_url, model=engine.model, kind="vllm")
    return Backend(config, http, request_timeout_s=timeout_s, connect_timeout_s=1)


async def router_of(*backends: Backend, default_tier: Tier = Tier.FAST) -> Router:
    router = Router(backends, default_tier)
    await router.probe_all()
    return router


async def hold(router: Router, session_id: str = "", **kwargs: Any) -> tuple[AsyncIterator[tuple[Delta, Any]], str]:
    """Start a streamed request and keep it open after its first token: it holds a backend slot."""
    stream = router.stream(ChatParams(messages=[{"role": "user", "content": "Tell a story."}], max_tokens=16),
                           session_id=session_id, **kwargs)
    _, routed = await anext(stream)
    return stream, routed.backend.name


def test_vllm_load_is_read_from_its_metrics() -> None:
    text = ('vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42\n')
    assert vllm_load(text) == (3.0, 0.42)


async def test_picks_the_least_loaded_backend(llama_servers: tuple[LlamaServer, LlamaServer],
                                              flaky_engine: FlakyEngine, http: httpx.AsyncClient) -> None:
    a, b = llama(llama_servers[0], "a", http), llama(llama_servers[1], "b", http)
    vllm = flaky(flaky_engine, http)
    flaky_engine.waiting, flaky_engine.kv_cache_usage = 40, 0.9  # a busy vLLM, as its /metrics says
    router = await router_of(a, b, vllm)
    assert vllm.healthy and (vllm.engine_waiting, vllm.kv_cache_usage) == (40, 0.9)
    stream, first = await hold(router)
    try:
        _, routed = await router.complete(HI)
        # our own in-flight count makes the held backend busier; the vLLM queue makes it busiest
        assert routed.backend.name == ({"a", "b"} - {first}).pop()
        assert flaky_engine.chat_requests == 0
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    flaky_engine.waiting, flaky_engine.kv_cache_usage = 0, 0.0
    await router.probe_all()
    stream, _ = await hold(router)
    try:
        _, routed = await router.complete(HI)
        assert routed.backend.name == "vllm-like"  # its queue drained: idle, and it has served nothing
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_session_affinity_holds_while_healthy(llama_servers: tuple[LlamaServer, LlamaServer],
                                                    flaky_engine: FlakyEngine, http: httpx.AsyncClient) -> None:
    vllm, a = flaky(flaky_engine, http), llama(llama_servers[1], "a", http)
    router = await router_of(vllm, a)
    _, first = await router.complete(HI, session_id="inv-1")
    assert router.pinned("inv-1") == first.backend.name
    stream, busy = await hold(router, session_id="inv-1")  # the session's backend is now the busier one
    try:
        assert busy == first.backend.name
        _, other = await router.complete(HI)
        assert other.backend.name != busy  # without a session: least loaded
        _, again = await router.complete(HI, session_id="inv-1")
        assert again.backend.name == busy  # with it: stays where its prefix cache is warm
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    # the session's backend goes down: the session moves, and stays moved
    assert busy == "vllm-like"  # equal load and requests at the start: table order decides
    flaky_engine.mode = "error"
    await router.probe_all()
    _, moved = await router.complete(HI, session_id="inv-1")
    assert moved.backend.name == "a" and router.pinned("inv-1") == "a"
    flaky_engine.mode = "forward"
    await router.probe_all()
    _, stays = await router.complete(HI, session_id="inv-1")
    assert stays.backend.name == "a" and vllm.healthy


async def test_failover_on_5xx_connect_error_and_timeout(llama_servers: tuple[LlamaServer, LlamaServer],
                                                         http: httpx.AsyncClient) -> None:
    failures: tuple[Mode | Literal["gone"], ...] = ("error", "hang", "gone")
    for failure in failures:
        engine = FlakyEngine(llama_servers[0])
        engine.start()
        try:
            vllm = flaky(engine, http, timeout_s=1.0)
            backup = llama(llama_servers[1], "backup", http)
            router = await router_of(vllm, backup)
            assert vllm.healthy and vllm.load() <= backup.load()  # vllm-like is tried first (fewer requests)
            backup.requests = 1
            if failure == "gone":
                engine.stop()
            else:
                engine.mode = failure
            result, routed = await router.complete(HI)
        finally:
            engine.stop()
        assert routed.backend.name == "backup" and result.completion_tokens > 0, failure
        assert router.failovers == 1 and vllm.failures == 1 and not vllm.healthy, failure
        assert vllm.last_error, failure


async def test_stream_fails_over_before_the_first_token_only(llama_servers: tuple[LlamaServer, LlamaServer],
                                                             flaky_engine: FlakyEngine,
                                                             http: httpx.AsyncClient) -> None:
    vllm, backup = flaky(flaky_engine, http), llama(llama_servers[1], "backup", http)
    router = await router_of(vllm, backup)
    backup.requests = 1  # the flaky engine goes first
    flaky_engine.mode = "error"
    before = {name: _metric(name, backup="vllm-like") for name in ("failovers_total", "backend_failures_total")}
    first_tokens = _metric("time_to_first_token_seconds_count", backup="backup")
    tokens = _metric("completion_tokens_total", backup="backup")
    pieces = [delta async for delta, _ in router.stream(HI)]
    assert pieces[-1].finish_reason and "".join(p.text for p in pieces).strip()
    assert router.failovers == 1
    # the same figures on /metrics, per tier and backend
    assert all(_metric(name, backup="vllm-like") == value + 1 for name, value in before.items())
    assert _metric("time_to_first_token_seconds_count", backup="backup") == first_tokens + 1
    assert _metric("completion_tokens_total", backup="backup") == tokens + pieces[-1].completion_tokens
    assert _metric("queue_depth", backup="backup") == 0 and _metric("backend_healthy", backup="vllm-like") == 0

    flaky_engine.mode = "break_stream"
    vllm.mark_up()
    vllm.requests = 0
    received = []
    with pytest.raises(RpcError) as failed:
        async for delta, routed in router.stream(ChatParams(messages=[{"role": "user", "content": "Tell a story."}],
                                                            max_tokens=32)):
            received.append((delta, routed.backend.name))
    assert received and received[0][1] == "vllm-like"
    assert failed.value.code == StatusCode.UNAVAILABLE and "middle of the answer" in failed.value.message


async def test_tier_falls_back_when_all_its_backends_are_down(llama_servers: tuple[LlamaServer, LlamaServer],
                                                              flaky_engine: FlakyEngine,
                                                              http: httpx.AsyncClient) -> None:
    balanced = flaky(flaky_engine, http, tier=Tier.BALANCED)
    fast = llama(llama_servers[1], "fast-a", http)
    router = await router_of(balanced, fast)
    _, routed = await router.complete(HI, tier=Tier.BALANCED)
    assert routed.backend.name == "vllm-like" and not routed.fell_back

    flaky_engine.mode = "error"
    _, routed = await router.complete(HI, tier="balanced")  # fails over from balanced into fast
    assert routed.backend.name == "fast-a" and routed.fell_back
    _, routed = await router.complete(HI, tier="balanced")  # balanced is known down now
    assert routed.fell_back and router.tier_fallbacks == 2 and router.failovers == 1

    _, routed = await router.complete(HI, tier="powerful")  # no powerful backend: balanced is down too
    assert routed.backend.name == "fast-a" and routed.fell_back


async def test_unavailable_names_every_cause(llama_servers: tuple[LlamaServer, LlamaServer],
                                             flaky_engine: FlakyEngine, http: httpx.AsyncClient) -> None:
    dead = BackendConfig(name="dead", tier=Tier.FAST, url=f"http://127.0.0.1:{_closed_port()}/v1", model="m")
    router = await router_of(flaky(flaky_engine, http, tier=Tier.BALANCED), Backend(dead, http, connect_timeout_s=1))
    flaky_engine.mode = "error"
    with pytest.raises(RpcError) as failed:
        await router.complete(HI, tier="balanced")
    assert failed.value.code == StatusCode.UNAVAILABLE
    assert "nothing can serve tier balanced or lower" in failed.value.message
    assert "vllm-like" in failed.value.message and "dead: ConnectError" in failed.value.message
    with pytest.raises(RpcError) as unconfigured:
        await Router([], "fast").complete(HI)
    assert unconfigured.value.code == StatusCode.UNAVAILABLE and "no backend is configured" in unconfigured.value.message
    with pytest.raises(RpcError) as unknown:  # a label is parsed (any case); an unknown one is the caller's error
        await router.complete(HI, tier="turbo")
    assert unknown.value.code == StatusCode.INVALID_ARGUMENT and "fast, balanced, powerful" in unknown.value.message
    assert router.tier("Powerful") is Tier.POWERFUL and router.tier("") is Tier.FAST


async def test_backpressure_rejects_beyond_the_queue(llama_servers: tuple[LlamaServer, LlamaServer],
                                                     http: httpx.AsyncClient) -> None:
    only = llama(llama_servers[0], "only", http, max_in_flight=1, max_queued=1)
    router = await router_of(only)
    stream, _ = await hold(router)  # the one slot
    waiting = asyncio.create_task(router.complete(HI))  # the one queue place
    try:
        for _ in range(500):  # until the task has entered the queue
            if only.queued:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(RpcError) as full:
            await router.complete(HI)
        assert full.value.code == StatusCode.RESOURCE_EXHAUSTED and "queue limit" in full.value.message
        assert only.rejected == 1
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    result, _ = await waiting  # the queued request is served once the slot frees
    assert result.completion_tokens > 0 and only.in_flight == 0 and only.queued == 0


async def test_engine_4xx_is_the_callers_error(llama_servers: tuple[LlamaServer, LlamaServer],
                                               http: httpx.AsyncClient) -> None:
    router = await router_of(llama(llama_servers[0], "a", http))
    too_long = ChatParams(messages=[{"role": "user", "content": "word " * 6000}], max_tokens=4)
    with pytest.raises(RpcError) as refused:
        await router.complete(too_long)
    assert refused.value.code == StatusCode.INVALID_ARGUMENT and "refused" in refused.value.message
    assert router.backends[0].healthy and router.failovers == 0


def _closed_port() -> int:
    port: int = free_port()  # nothing listens there once the probe socket is closed
    return port


async def test_health_probes_neither_cut_nor_fail_a_running_answer(llama_servers: tuple[LlamaServer, LlamaServer],
                                                                   http: httpx.AsyncClient) -> None:
    backend = llama(llama_servers[0], "a", http)
    router = await router_of(backend)
    stream = router.stream(ChatParams(messages=[{"role": "user", "content": "Tell a story."}], max_tokens=48))
    pieces = [await anext(stream)]
    await asyncio.wait_for(router.probe_all(), 5)  # llama.cpp would block it until the answer ends
    pieces += [item async for item in stream]
    assert backend.healthy and pieces[-1][0].finish_reason
    assert pieces[-1][0].completion_tokens == len([p for p, _ in pieces if p.text]) > 8


def _metric(name: str, backup: str) -> float:
    value = REGISTRY.get_sample_value(f"bev_reasoning_{name}", {"tier": "fast", "backend": backup})
    return value or 0.0


async def test_busy_seconds_count_the_time_the_engine_had_work_not_the_sum(
        llama_servers: tuple[LlamaServer, LlamaServer], http: httpx.AsyncClient) -> None:
    backend = llama(llama_servers[0], "busy", http, max_in_flight=2)
    router = await router_of(backend)
    before = REGISTRY.get_sample_value("bev_reasoning_backend_busy_seconds_total",
                                       {"tier": "fast", "backend": "busy"}) or 0.0

    async def timed() -> float:
        started = asyncio.get_running_loop().time()
        await router.complete(HI)
        return asyncio.get_running_loop().time() - started

    started = asyncio.get_running_loop().time()
    durations = await asyncio.gather(timed(), timed())  # overlapping: one engine, two requests in flight
    wall = asyncio.get_running_loop().time() - started
    await asyncio.sleep(0.2)  # idle time is not busy time
    busy = (REGISTRY.get_sample_value("bev_reasoning_backend_busy_seconds_total",
                                      {"tier": "fast", "backend": "busy"}) or 0.0) - before
    assert max(durations) * 0.95 <= busy <= wall + 0.01
    assert busy < sum(durations)  # the overlap is counted once
