"""Collectors: indicator extraction now; collection and the knowledge graph grow here (issue C3)."""

from __future__ import annotations

import asyncio

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsServicer
from bev.rpc import CallContext, RpcError, StatusCode
from bev.runtime import ServiceRuntime
from services.collectors.indicators import extract_indicators
from services.collectors.settings import Settings


class Collectors(CollectorsServicer):
    def __init__(self, runtime: ServiceRuntime[Settings]) -> None:
        super().__init__(runtime.info)
        self.config = runtime.settings.collectors

    async def Extract(self, request: collectors_pb2.ExtractRequest, ctx: CallContext) -> collectors_pb2.ExtractResponse:
        size = len(request.text.encode())
        if size > self.config.max_extract_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED, f"text is {size} bytes; Extract accepts at most {self.config.max_extract_bytes}"
            )
        # Extraction is CPU-bound regex work: keep it off the event loop.
        indicators = await asyncio.to_thread(extract_indicators, request.text)
        return collectors_pb2.ExtractResponse(
            indicators=[collectors_pb2.Indicator(type=i.type, value=i.value) for i in indicators]
        )


async def build(runtime: ServiceRuntime[Settings]) -> Collectors:
    return Collectors(runtime)
