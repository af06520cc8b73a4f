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
from bev.telemetry import RPC_ERRORS, RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS, active_span, get_logger

log = get_logger(__name__)
_tracer = trace.get_tracer("bev.rpc")
# Built once: subscripting Callable inside cast() built a new generic alias on every call (~1 us).
_UnaryHandler = Callable[[Message, CallContext], Awaitable[Message]]
_StreamHandler = Callable[[Message, CallContext], AsyncIterator[Message]]


class _MethodCalls:
    """Per (method, transport): the span name and the Prometheus children, looked up once.

    Why: `.labels(...)` builds a tuple, validates it and takes the metric's lock on every call;
    a call needed four of them (~1 us each on a shared 2-core box). The children are created on
    the first call, as before, so no sample appears before a method is used.
    """

    __slots__ = ("_by_code", "in_flight", "labels", "latency", "span_name")

    def __init__(self, span_name: str, labels: tuple[str, str, str]) -> None:
        self.span_name = span_name
        self.labels = labels
        self.in_flight = RPC_IN_FLIGHT.labels(*labels)
        self.latency = RPC_LATENCY.labels(*labels)
        self._by_code: dict[StatusCode, tuple[Any, Any | None]] = {}

    def record(self, code: StatusCode, started: float) -> None:
        self.in_flight.dec()
        self.latency.observe(time.perf_counter() - started)
        counters = self._by_code.get(code)
        if counters is None:
            errors = None if code is StatusCode.OK else RPC_ERRORS.labels(*self.labels, code.name)
            counters = self._by_code[code] = (RPC_REQUESTS.labels(*self.labels, code.name), errors)
        counters[0].inc()
        if counters[1] is not None:
            counters[1].inc()


class Dispatcher:
    def __init__(self, servicer: Servicer, *, max_request_bytes: int, default_timeout_s: float) -> None:
        self.servicer = servicer
        self.service = servicer.SERVICE
        self.max_request_bytes = max_request_bytes
        self.default_timeout_s = default_timeout_s
        self._calls: dict[tuple[str, str], _MethodCalls] = {}

    def _method_calls(self, method: MethodDef, transport: str) -> _MethodCalls:
        calls = self._calls.get((method.name, transport))
        if calls is None:
            calls = self._calls[(method.name, transport)] = _MethodCalls(
                f"{self.service.full_name}/{method.name}", (self.service.name, method.name, transport)
            )
        return calls

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
        # One coroutine, no per-call closure: this is the hot path of every RPC on both transports.
        calls = self._method_calls(method, ctx.transport)
        started = time.perf_counter()
        code = StatusCode.OK
        calls.in_flight.inc()
        with active_span(_tracer, calls.span_name, SpanKind.SERVER, extract(ctx.metadata)) as span:
            try:
                request = self._parse(method, data)
                handler = cast(_UnaryHandler, getattr(self.servicer, method.name))
                async with asyncio.timeout(ctx.time_remaining()):
                    response = await handler(request, ctx)
                return response.SerializeToString()
            except BaseException as exc:
                error = self._to_rpc_error(method, exc)
                if error is None:
                    raise
                code = error.code
                span.set_status(Status(SpanStatusCode.ERROR, error.message))
                raise error from exc
            finally:
                calls.record(code, started)

    async def stream(self, method: MethodDef, data: bytes, ctx: CallContext) -> AsyncIterator[bytes]:
        """Yields serialized responses; raises RpcError at the end if the stream failed."""
        calls = self._method_calls(method, ctx.transport)
        started = time.perf_counter()
        code = StatusCode.OK
        calls.in_flight.inc()
        with active_span(_tracer, calls.span_name, SpanKind.SERVER, extract(ctx.metadata)) as span:
            try:
                request = self._parse(method, data)
                handler = cast(_StreamHandler, getattr(self.servicer, method.name))
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
                calls.record(code, started)

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
