"""Transport-independent call handling, shared by the NATS and gRPC servers.

Both transports hand the dispatcher raw bytes and a CallContext; it enforces the size
limit, parses, runs the handler under the caller's deadline inside a server span, records
metrics, and turns every failure into an RpcError so no handler can hang or crash a caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status
from opentelemetry.trace import StatusCode as SpanStatusCode

from bev.rpc.context import CallContext, Transport
from bev.rpc.definition import MethodDef
from bev.rpc.errors import RpcError, StatusCode
from bev.rpc.servicer import Servicer
from bev.telemetry import RPC_ERRORS, RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS, get_logger

log = get_logger(__name__)
_tracer = trace.get_tracer("bev.rpc")


class Dispatcher:
    def __init__(self, servicer: Servicer, *, max_request_bytes: int, default_timeout_s: float) -> None:
        self.servicer = servicer
        self.service = servicer.SERVICE
        self.max_request_bytes = max_request_bytes
        self.default_timeout_s = default_timeout_s

    def context(
        self, method: MethodDef, transport: Transport, timeout_s: float | None, metadata: Mapping[str, str]
    ) -> CallContext:
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        return CallContext(
            service=self.service.name,
            method=method.name,
            transport=transport,
            deadline=time.monotonic() + timeout,
            metadata=metadata,
        )

    def _parse(self, method: MethodDef, data: bytes) -> Message:
        if len(data) > self.max_request_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"request is {len(data)} bytes; {self.service.name} accepts at most {self.max_request_bytes}",
            )
        request = method.request_type()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT, f"request is not a valid {method.request_type.__name__}: {exc}"
            ) from exc
        return request

    async def unary(self, method: MethodDef, data: bytes, ctx: CallContext) -> bytes:
        async def call() -> bytes:
            request = self._parse(method, data)
            handler = cast(Callable[[Message, CallContext], Awaitable[Message]], getattr(self.servicer, method.name))
            async with asyncio.timeout(ctx.time_remaining()):
                response = await handler(request, ctx)
            return response.SerializeToString()

        return await self._observe(method, ctx, call)

    async def stream(self, method: MethodDef, data: bytes, ctx: CallContext) -> AsyncIterator[bytes]:
        """Yields serialized responses; raises RpcError at the end if the stream failed."""
        labels = (self.service.name, method.name, ctx.transport)
        started = time.perf_counter()
        code = StatusCode.OK
        RPC_IN_FLIGHT.labels(*labels).inc()
        with _tracer.start_as_current_span(
            f"{self.service.full_name}/{method.name}", context=extract(ctx.metadata), kind=SpanKind.SERVER
        ) as span:
            try:
                request = self._parse(method, data)
                handler = cast(
                    Callable[[Message, CallContext], AsyncIterator[Message]], getattr(self.servicer, method.name)
                )
                async with asyncio.timeout(ctx.time_remaining()):
                    async for response in handler(request, ctx):
                        yield response.SerializeToString()
            except BaseException as exc:
                error = self._to_rpc_error(method, exc)
                if error is None:
                    raise
                code = error.code
                span.set_status(Status(SpanStatusCode.ERROR, error.message))
                raise error from exc
            finally:
                self._record(labels, code, started)

    async def _observe(self, method: MethodDef, ctx: CallContext, call: Callable[[], Awaitable[bytes]]) -> bytes:
        labels = (self.service.name, method.name, ctx.transport)
        started = time.perf_counter()
        code = StatusCode.OK
        RPC_IN_FLIGHT.labels(*labels).inc()
        with _tracer.start_as_current_span(
            f"{self.service.full_name}/{method.name}", context=extract(ctx.metadata), kind=SpanKind.SERVER
        ) as span:
            try:
                return await call()
            except BaseException as exc:
                error = self._to_rpc_error(method, exc)
                if error is None:
                    raise
                code = error.code
                span.set_status(Status(SpanStatusCode.ERROR, error.message))
                raise error from exc
            finally:
                self._record(labels, code, started)

    def _record(self, labels: tuple[str, str, str], code: StatusCode, started: float) -> None:
        RPC_IN_FLIGHT.labels(*labels).dec()
        RPC_LATENCY.labels(*labels).observe(time.perf_counter() - started)
        RPC_REQUESTS.labels(*labels, code.name).inc()
        if code is not StatusCode.OK:
            RPC_ERRORS.labels(*labels, code.name).inc()

    def _to_rpc_error(self, method: MethodDef, exc: BaseException) -> RpcError | None:
        """Map a handler failure to the status the caller sees; None = let it propagate (cancellation)."""
        if isinstance(exc, RpcError):
            return exc
        if isinstance(exc, TimeoutError):
            return RpcError(StatusCode.DEADLINE_EXCEEDED, f"{self.service.name}.{method.name} ran past the deadline")
        if isinstance(exc, asyncio.CancelledError | GeneratorExit | KeyboardInterrupt | SystemExit):
            return None
        log.exception("handler failed", method=method.name, error=repr(exc))
        return RpcError(StatusCode.INTERNAL, f"{self.service.name}.{method.name} failed: {type(exc).__name__}: {exc}")


def metadata_dict(pairs: Any) -> dict[str, str]:
    """Normalise transport metadata (NATS headers, gRPC metadata tuples) to lower-case str keys."""
    if pairs is None:
        return {}
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return {str(key).lower(): value for key, value in items if isinstance(value, str)}
