"""The gateway's side of the shared vocabularies (labels in, labels out, 400s listing the valid
ones), and the OpenAI stream's handling of errors that are not RPC statuses. No services needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import HTTPException
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from bev.reasoning.v1 import reasoning_pb2
from bev.rpc import RpcError, StatusCode
from services.gateway.routes import openai
from services.gateway.routes.common import HTTP_STATUS, tier_value, tlp_value, to_json


def test_tlp_labels_in() -> None:
    assert tlp_value("green") == common_pb2.TLP_GREEN
    assert tlp_value("TLP:AMBER+STRICT") == common_pb2.TLP_AMBER_STRICT
    assert tlp_value("white") == common_pb2.TLP_CLEAR
    assert tlp_value("") == tlp_value("  ") == common_pb2.TLP_UNSPECIFIED  # the service's default
    with pytest.raises(HTTPException) as bad:
        tlp_value("purple")
    assert bad.value.status_code == 400
    assert "'purple'" in str(bad.value.detail) and "clear, green, amber, amber+strict, red" in str(bad.value.detail)


def test_tier_names_in() -> None:
    assert tier_value("fast") == common_pb2.TIER_FAST and tier_value("POWERFUL") == common_pb2.TIER_POWERFUL
    assert tier_value("") == common_pb2.TIER_UNSPECIFIED
    with pytest.raises(HTTPException) as bad:
        tier_value("turbo")
    assert bad.value.status_code == 400 and "fast, balanced, powerful" in str(bad.value.detail)


def test_labels_out() -> None:
    observation = collectors_pb2.Observation(id="o", tlp=common_pb2.TLP_GREEN,
                                             entity=collectors_pb2.Entity(id="url--x", type="url"))
    shown = to_json(observation)
    assert shown["tlp"] == "green" and shown["entity"]["id"] == "url--x" and shown["confidence"] == 0
    models = reasoning_pb2.ListModelsResponse(models=[reasoning_pb2.ModelInfo(name="m", tier=common_pb2.TIER_BALANCED)])
    assert to_json(models)["models"][0]["tier"] == "balanced"


def test_http_status_lives_with_the_routes() -> None:
    from services.gateway import api

    assert vars(api)["HTTP_STATUS"] is HTTP_STATUS and HTTP_STATUS[StatusCode.RESOURCE_EXHAUSTED] == 429


def _stream_errors(error: str) -> float:
    return REGISTRY.get_sample_value("bev_gateway_stream_errors_total", {"error": error}) or 0.0


async def test_a_stream_failing_with_a_non_rpc_error_is_logged_counted_and_reported() -> None:
    async def chunks() -> AsyncIterator[reasoning_pb2.ChatChunk]:
        yield reasoning_pb2.ChatChunk(text="Hel")
        raise RuntimeError("decoder exploded")

    queue: asyncio.Queue[reasoning_pb2.ChatChunk | RpcError | None] = asyncio.Queue()
    before = _stream_errors("RuntimeError")
    with capture_logs() as logs:
        await openai._pump(chunks(), queue)
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert isinstance(items[0], reasoning_pb2.ChatChunk) and items[-1] is None
    failed = items[1]
    assert isinstance(failed, RpcError)  # the client still gets it (in-band error), as before
    assert failed.code is StatusCode.INTERNAL and failed.message == "the answer stream failed: decoder exploded"
    assert _stream_errors("RuntimeError") == before + 1
    [entry] = [e for e in logs if e["event"] == "chat completion stream failed"]
    assert entry["log_level"] == "error" and entry["exc_info"] and "decoder exploded" in entry["error"]


async def test_an_rpc_error_ends_the_stream_uncounted() -> None:
    async def chunks() -> AsyncIterator[reasoning_pb2.ChatChunk]:
        raise RpcError(StatusCode.UNAVAILABLE, "no backend")
        yield reasoning_pb2.ChatChunk()  # pragma: no cover  (makes this an async generator)

    queue: asyncio.Queue[reasoning_pb2.ChatChunk | RpcError | None] = asyncio.Queue()
    before = _stream_errors("RpcError")
    with capture_logs() as logs:
        await openai._pump(chunks(), queue)
    first = queue.get_nowait()
    assert isinstance(first, RpcError) and first.code is StatusCode.UNAVAILABLE and queue.get_nowait() is None
    assert _stream_errors("RpcError") == before and not logs
