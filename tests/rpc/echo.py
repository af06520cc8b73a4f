"""The Echo service (protos/bev/echo): a real servicer for RPC-layer tests and bench/bench_rpc.py.

Its contract stays in protos/ with the fleet's (one generator, one freshness test for all); this
implementation is not shipped: it lives with the tests that serve it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from opentelemetry import trace

from bev.echo.v1 import echo_pb2
from bev.echo.v1.echo_rpc import EchoServicer
from bev.rpc import CallContext, RpcError
from bev.rpc.errors import code_from_int


class Echo(EchoServicer):
    async def Echo(self, request: echo_pb2.EchoRequest, ctx: CallContext) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(payload=request.payload)

    async def EchoStream(self, request: echo_pb2.EchoRequest, ctx: CallContext) -> AsyncIterator[echo_pb2.EchoResponse]:
        for index in range(request.repeat):
            yield echo_pb2.EchoResponse(payload=request.payload, index=index)
            await asyncio.sleep(0)  # a stream that yields control, like a real producer

    async def Fail(self, request: echo_pb2.FailRequest, ctx: CallContext) -> echo_pb2.EchoResponse:
        if request.raise_unexpected:
            raise ValueError(request.message)
        raise RpcError(code_from_int(request.code), request.message)

    async def Sleep(self, request: echo_pb2.SleepRequest, ctx: CallContext) -> echo_pb2.SleepResponse:
        await asyncio.sleep(request.seconds)
        return echo_pb2.SleepResponse(remaining_s=ctx.time_remaining())

    async def WhoAmI(self, request: echo_pb2.EchoRequest, ctx: CallContext) -> echo_pb2.CallInfo:
        span = trace.get_current_span().get_span_context()
        return echo_pb2.CallInfo(
            trace_id=format(span.trace_id, "032x"), transport=ctx.transport, remaining_s=ctx.time_remaining()
        )


ECHO_MAX_REQUEST_BYTES = 1024 * 1024


@dataclass
class EchoEndpoints:
    """Where the `echo_service` fixture serves Echo."""

    nc: NatsClient
    grpc_address: str
    servicer: Echo
    instance: str
