"""Transport-independent call handling, shared by the NATS and gRPC servers.

Both transports hand the dispatcher raw bytes and a CallContext; it enforces the size
limit, parses, runs the handler under the caller's deadline inside a server span, records
metrics, and turns every failure into an RpcError so no handler can hang or crash a caller.

The deadline timer is armed only when a unary handler first suspends: one that completes
without awaiting (most in-memory answers) cannot run past a deadline it never yields to, so it
needs no timer, and arming and cancelling one per call was a measurable part of the call's cost.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping
from typing import Any, cast

from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status
from opentelemetry.trace import StatusCode as SpanStatusCode

from bev.rpc.context import CallContext, Transport
from bev.rpc.definition import MethodDef
from bev.rpc.errors import RpcError, StatusCode
from bev.rpc.servicer import Servicer
from bev.telemetry import RpcMethodStats, get_logger, rpc_method_stats, rpc_span

log = get_logger(__name__)
_tracer = trace.get_tracer("bev.rpc")
# Built once: subscripting Callable inside cast() built a new generic alias on every call (~1 us).
_UnaryHandler = Callable[[Message, CallContext], Coroutine[Any, Any, Message]]
_StreamHandler = Callable[[Message, CallContext], AsyncIterator[Message]]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Message], yielded: Any) -> Generator[Any, Any, Message]:
    """Await the rest of `coro`, which has already run up to its first suspension (where it
    yielded `yielded`): what `await coro` would have done from there on, so the task it runs in
    waits on the same futures, and a cancellation (the deadline's) is thrown into `coro`."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # cancellation and anything else thrown into the awaiting task
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return cast(Message, stop.value)
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return cast(Message, stop.value)


class _MethodCalls:
    """Per (method, transport): the span name and its metric figures, looked up once."""

    __slots__ = ("span_name", "stats")

    def __init__(self, span_name: str, stats: RpcMethodStats) -> None:
        self.span_name = span_name
        self.stats = stats


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
            # Created on the first call, as before, so no sample appears before a method is used.
            calls = self._calls[(method.name, transport)] = _MethodCalls(
                f"{self.service.full_name}/{method.name}", rpc_method_stats(self.service.name, method.name, transport)
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
        stats = calls.stats
        started = time.perf_counter()
        code = "OK"
        stats.started()
        with rpc_span(_tracer, calls.span_name, SpanKind.SERVER, ctx.metadata) as span:
            try:
                request = self._parse(method, data)
                # Annotations, not cast(): typing.cast is a function call, and this runs per call.
                handler: _UnaryHandler = getattr(self.servicer, method.name)
                coro = handler(request, ctx)
                response: Message
                try:
                    yielded = coro.send(None)
                except StopIteration as done:  # answered without suspending: no timer needed
                    response = done.value
                else:
                    async with asyncio.timeout(ctx.time_remaining()):
                        response = await _resume(coro, yielded)
                return response.SerializeToString()
            except BaseException as exc:
                error = self._to_rpc_error(method, exc)
                if error is None:
                    raise
                code = error.code.name
                span.set_status(Status(SpanStatusCode.ERROR, error.message))
                raise error from exc
            finally:
                stats.finished(code, time.perf_counter() - started)

    async def stream(self, method: MethodDef, data: bytes, ctx: CallContext) -> AsyncIterator[bytes]:
        """Yields serialized responses; raises RpcError at the end if the stream failed."""
        calls = self._method_calls(method, ctx.transport)
        stats = calls.stats
        started = time.perf_counter()
        code = "OK"
        stats.started()
        with rpc_span(_tracer, calls.span_name, SpanKind.SERVER, ctx.metadata) as span:
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
                code = error.code.name
                span.set_status(Status(SpanStatusCode.ERROR, error.message))
                raise error from exc
            finally:
                stats.finished(code, time.perf_counter() - started)

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
    # NATS headers are a dict: checked first, as isinstance(..., Mapping) is a slower ABC check.
    items = pairs.items() if isinstance(pairs, dict | Mapping) else pairs
    return {str(key).lower(): value for key, value in items if isinstance(value, str)}
