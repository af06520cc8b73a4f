"""The typed client every caller uses; generated subclasses (bev/<svc>/v1/<svc>_rpc.py) add one
method per RPC. NATS is the default transport; give a gRPC address to call from outside the bus.

Deadlines come from each method's `(bev.common.v1.call)` option in its proto, unless the caller
passes `timeout_s` (per call, or for every call of a client). An idempotent unary call gets half of
its deadline for the first attempt: if the instance that got it is gone (UNAVAILABLE) or silent
(no answer: frozen, or killed mid-call), it is sent once more with what is left, to a replica that
is alive right now (over NATS: one that answers a $SRV.PING). No call outlives its deadline.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import ClassVar, Protocol, Self, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from bev.rpc.definition import MethodDef, ServiceDef
from bev.rpc.errors import RpcError, StatusCode
from bev.rpc.grpc_transport import GrpcTransport
from bev.rpc.nats_transport import NatsTransport
from bev.telemetry import RPC_CLIENT_RETRIES, inject_trace, rpc_span

R = TypeVar("R", bound=Message)
_tracer = trace.get_tracer("bev.rpc")
# Codes that mean "that instance did not do it": gone, or silent past the attempt's share.
_RETRIED = frozenset({StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})
MIN_RETRY_BUDGET_S = 0.05  # less left than this: a second attempt could not get an answer anyway


class Transport(Protocol):
    async def unary(self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]) -> bytes: ...

    async def unary_elsewhere(
        self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]
    ) -> bytes:
        """The same call again, steered away from an instance that did not answer where the
        transport can tell which ones are alive."""
        ...

    def stream(
        self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]
    ) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class Client:
    SERVICE: ClassVar[ServiceDef]

    def __init__(self, transport: Transport, *, timeout_s: float | None = None) -> None:
        self.transport = transport
        self.timeout_s = timeout_s  # None: each method's own deadline

    @classmethod
    def over_nats(cls, nc: NatsClient, *, timeout_s: float | None = None) -> Self:
        return cls(NatsTransport(nc), timeout_s=timeout_s)

    @classmethod
    def over_grpc(
        cls, address: str, *, timeout_s: float | None = None, credentials: grpc.ChannelCredentials | None = None
    ) -> Self:
        """`credentials`: grpc.ssl_channel_credentials(...) for a server that requires mTLS."""
        return cls(GrpcTransport(address, credentials=credentials), timeout_s=timeout_s)

    async def close(self) -> None:
        await self.transport.close()

    @staticmethod
    def _metadata(extra: Mapping[str, str] | None, span: trace.Span) -> dict[str, str]:
        carrier: dict[str, str] = dict(extra) if extra else {}
        inject_trace(carrier, span.get_span_context())  # W3C traceparent/tracestate of the client span
        return carrier

    @staticmethod
    def _decode(method: MethodDef, data: bytes, into: type[R]) -> R:
        response = into()
        try:
            response.ParseFromString(data)
        except DecodeError as exc:
            raise RpcError(StatusCode.INTERNAL, f"{method.subject}: malformed response: {exc}") from exc
        return response

    async def _call(
        self, name: str, request: Message, into: type[R], timeout_s: float | None, metadata: Mapping[str, str] | None
    ) -> R:
        method = self.SERVICE.methods[name]
        deadline_s = timeout_s or self.timeout_s or method.deadline_s
        # rpc_span = start_as_current_span without its general path where nothing records (see there).
        with rpc_span(_tracer, f"{self.SERVICE.full_name}/{name}", SpanKind.CLIENT) as span:
            payload, carrier = request.SerializeToString(), self._metadata(metadata, span)
            if not method.idempotent:
                data = await self.transport.unary(method, payload, deadline_s, carrier)
            else:
                data = await self._with_one_retry(method, payload, deadline_s, carrier)
        return self._decode(method, data, into)

    async def _with_one_retry(self, method: MethodDef, payload: bytes, deadline_s: float,
                              carrier: Mapping[str, str]) -> bytes:
        began = time.monotonic()
        try:
            return await self.transport.unary(method, payload, deadline_s / 2, carrier)
        except RpcError as exc:
            left = deadline_s - (time.monotonic() - began)
            if exc.code not in _RETRIED or left < MIN_RETRY_BUDGET_S:
                raise
            RPC_CLIENT_RETRIES.labels(self.SERVICE.name, method.name, exc.code.name).inc()
            return await self.transport.unary_elsewhere(method, payload, left, carrier)

    async def _stream(
        self, name: str, request: Message, into: type[R], timeout_s: float | None, metadata: Mapping[str, str] | None
    ) -> AsyncIterator[R]:
        method = self.SERVICE.methods[name]
        with rpc_span(_tracer, f"{self.SERVICE.full_name}/{name}", SpanKind.CLIENT) as span:
            stream = self.transport.stream(
                method, request.SerializeToString(), timeout_s or self.timeout_s or method.deadline_s,
                self._metadata(metadata, span)
            )
            try:
                async for data in stream:
                    yield self._decode(method, data, into)
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
