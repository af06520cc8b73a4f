"""RPC over NATS: unary and server-streaming request/reply with protobuf payloads.

Wire format (all in NATS headers, payload is the serialized protobuf message):
- request:  `Bev-Timeout-Ms` (the caller's remaining deadline), W3C `traceparent`/`tracestate`;
- response: success has no status header; failure carries the NATS micro error headers
  `Nats-Service-Error-Code` (the gRPC status code number) and `Nats-Service-Error` (message);
- stream:   each message is one response; the last message has `Bev-Stream-End: 1` and, if the
  stream failed, the error headers. A caller that stops early publishes to `<reply>.cancel`.
- one instance: every method is also served, outside the queue group, on
  `bev.<service>.v1.<Method>.<instance>`, so monitoring can ask each replica for its Health.
The service registers as a NATS micro service, so `$SRV.PING/INFO/STATS` discover it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import EndpointStats, Service

from bev.rpc.definition import MethodDef
from bev.rpc.dispatch import Dispatcher, metadata_dict
from bev.rpc.errors import RpcError, StatusCode, code_from_int, code_to_int
from bev.rpc.servicer import Servicer
from bev.rpc.starting import NO_INSTANCE
from bev.telemetry import get_logger

TIMEOUT_HEADER = "Bev-Timeout-Ms"
STREAM_END_HEADER = "Bev-Stream-End"
NO_RESPONDERS_STATUS = "503"

log = get_logger(__name__)

# A retry first asks the service's replicas who is alive: this long at most, or until this many answered.
PING_WINDOW_S = 0.25
PING_ENOUGH = 3


def _error_headers(error: RpcError) -> dict[str, str]:
    # Header values are single lines; keep the message readable but safe.
    message = " ".join(error.message.split())[:1000]
    return {ERROR_CODE_HEADER: str(code_to_int(error.code)), ERROR_HEADER: message}


def _raise_for_headers(headers: Mapping[str, str] | None, subject: str) -> None:
    if not headers:
        return
    if headers.get("Status") == NO_RESPONDERS_STATUS:
        raise RpcError(StatusCode.UNAVAILABLE, f"{NO_INSTANCE} {subject}")
    code = headers.get(ERROR_CODE_HEADER)
    if code is not None:
        raise RpcError(code_from_int(int(code)), headers.get(ERROR_HEADER, ""))


class _RequestCounter:
    """Total requests and the last minute's rate for `bev status`, in one-second buckets:
    O(1) per request and fixed memory however busy the replica is."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self.total = 0
        self._counts = [0] * window_s
        self._seconds = [0] * window_s  # which whole second each bucket currently holds

    def hit(self) -> None:
        self.total += 1
        second = int(time.monotonic())
        slot = second % self.window_s
        if self._seconds[slot] != second:
            self._seconds[slot], self._counts[slot] = second, 0
        self._counts[slot] += 1

    def rate(self) -> float:
        now = int(time.monotonic())
        recent = sum(c for c, s in zip(self._counts, self._seconds, strict=True) if now - s < self.window_s)
        return recent / self.window_s


class NatsRpcServer:
    """Serves one servicer on `bev.<service>.v1.<Method>` in the service's queue group."""

    def __init__(
        self,
        nc: NatsClient,
        servicer: Servicer,
        *,
        max_request_bytes: int,
        default_timeout_s: float,
        max_concurrency: int,
        instance: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self._nc = nc
        self._instance = instance
        self._dispatcher = Dispatcher(
            servicer, max_request_bytes=max_request_bytes, default_timeout_s=default_timeout_s
        )
        self._definition = servicer.SERVICE
        self._metadata = metadata or {}
        # nats-py runs a subscription's callback serially, so each request gets its own task;
        # the semaphore bounds them, and the excess waits in the NATS client's pending queue.
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: dict[str, int] = {}
        self._rates: dict[str, _RequestCounter] = {}
        self._service: Service | None = None
        self._direct: Subscription | None = None

    async def start(self) -> None:
        definition = self._definition
        self._service = await add_service(
            self._nc,
            name=definition.micro_name,
            version="1.0.0",
            description=definition.full_name,
            metadata=self._metadata,
            queue_group=definition.queue_group,
            stats_handler=self._endpoint_stats,
        )
        for method in definition.methods.values():
            self._errors[method.name] = 0
            self._rates[method.name] = _RequestCounter()
            await self._service.add_endpoint(
                name=method.name, subject=method.subject, handler=self._handler(method)
            )
        handlers = {name: self._handler(method) for name, method in definition.methods.items()}

        async def direct(msg: Msg) -> None:
            handler = handlers.get(msg.subject.split(".")[3])
            if handler is not None:
                await handler(Request(msg))

        self._direct = await self._nc.subscribe(f"{definition.package}.*.{self._instance}", cb=direct)
        # Wait until nats-server has our subscriptions: without it a caller on another connection
        # could get "no responders" right after start() returned (seen as a flaky first test).
        await self._nc.flush()

    def _endpoint_stats(self, stats: EndpointStats) -> dict[str, Any]:
        # micro counts only requests on the queue-group subject, and a request as failed only if
        # its handler raises; ours hand off to a task at once and also serve instance-addressed
        # subjects, so the real counts and the recent rate travel in `data` (docs/decisions/0002).
        counter = self._rates[stats.name]
        return {"requests": counter.total, "errors": self._errors.get(stats.name, 0), "rate_1m": counter.rate()}

    def _handler(self, method: MethodDef) -> Any:
        rate = self._rates[method.name]  # looked up once, not per request
        tasks = self._tasks

        async def handle(request: Request) -> None:
            rate.hit()
            await self._slots.acquire()
            task = asyncio.create_task(self._serve(method, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return handle

    async def _serve(self, method: MethodDef, request: Request) -> None:
        try:
            headers = request.headers or {}
            timeout_ms = headers.get(TIMEOUT_HEADER)
            timeout_s = int(timeout_ms) / 1000 if timeout_ms and timeout_ms.isdigit() else None
            ctx = self._dispatcher.context(method, "nats", timeout_s, metadata_dict(headers))
            if method.server_streaming:
                await self._serve_stream(method, request, ctx)
            else:
                try:
                    payload = await self._dispatcher.unary(method, request.data, ctx)
                except RpcError as error:
                    self._errors[method.name] += 1
                    await request.respond(b"", headers=_error_headers(error))
                    return
                await request.respond(payload)
        except nats.errors.Error as exc:
            # The caller is gone or the connection closed; nothing to answer, but say so.
            log.warning("could not answer", method=method.name, error=repr(exc))
        finally:
            self._slots.release()

    async def _serve_stream(self, method: MethodDef, request: Request, ctx: Any) -> None:
        reply = request._msg.reply  # micro's Request hides the reply subject; streams need it
        if not reply:
            return
        producer = asyncio.current_task()
        assert producer is not None

        async def on_cancel(_: Msg) -> None:
            producer.cancel()

        cancel_sub = await self._nc.subscribe(f"{reply}.cancel", cb=on_cancel)
        end_headers = {STREAM_END_HEADER: "1"}
        try:
            async for payload in self._dispatcher.stream(method, request.data, ctx):
                await self._nc.publish(reply, payload)
        except RpcError as error:
            self._errors[method.name] += 1
            end_headers.update(_error_headers(error))
        except asyncio.CancelledError:
            return  # the caller stopped reading; it expects nothing more
        finally:
            await cancel_sub.unsubscribe()
        await self._nc.publish(reply, b"", headers=end_headers)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, then let in-flight ones finish (up to grace_s)."""
        if self._direct is not None:
            await self._direct.unsubscribe()
        if self._service is not None:
            await self._service.stop()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()


class NatsTransport:
    """The caller's side of RPC over NATS; give `instance` to address one replica, not the queue group."""

    def __init__(self, nc: NatsClient, instance: str = "") -> None:
        self._nc = nc
        self._suffix = f".{instance}" if instance else ""

    def _headers(self, timeout_s: float, metadata: Mapping[str, str]) -> dict[str, str]:
        return {**metadata, TIMEOUT_HEADER: str(max(1, int(timeout_s * 1000)))}

    def _require_connection(self, method: MethodDef) -> None:
        # While nats-py reconnects it buffers requests and the caller would wait out its deadline:
        # say at once that the bus is down instead.
        if not self._nc.is_connected:
            state = "reconnecting" if self._nc.is_reconnecting else "closed"
            raise RpcError(StatusCode.UNAVAILABLE,
                           f"the bus (NATS) is unreachable ({state}); {method.subject} was not sent")

    async def unary(self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]) -> bytes:
        self._require_connection(method)
        try:
            msg = await self._nc.request(
                method.subject + self._suffix, payload, timeout=timeout_s, headers=self._headers(timeout_s, metadata)
            )
        except nats.errors.NoRespondersError as exc:
            raise RpcError(StatusCode.UNAVAILABLE, f"{NO_INSTANCE} {method.subject}") from exc
        except nats.errors.TimeoutError as exc:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"{method.subject} gave no answer in {timeout_s:.3g}s") from exc
        except nats.errors.MaxPayloadError as exc:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"request too large for the bus: {exc}") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
            raise RpcError(StatusCode.UNAVAILABLE, f"NATS connection closed: {exc}") from exc
        _raise_for_headers(msg.headers, method.subject)
        return msg.data

    async def unary_elsewhere(self, method: MethodDef, payload: bytes, timeout_s: float,
                              metadata: Mapping[str, str]) -> bytes:
        """A retry: sent to one replica that answers a `$SRV.PING` right now, not to the queue
        group, which would hand it to a frozen replica as readily as to a live one (NATS keeps a
        stopped process in the group until its pings time out, minutes later). A frozen process
        answers no PING. If none answers in time, or this transport is pinned to one instance,
        the queue group it is."""
        if self._suffix:
            return await self.unary(method, payload, timeout_s, metadata)
        self._require_connection(method)
        service = method.subject.split(".")[1]
        live = await self._responding_instances(service, min(PING_WINDOW_S, timeout_s / 4))
        if not live:
            return await self.unary(method, payload, timeout_s - min(PING_WINDOW_S, timeout_s / 4), metadata)
        pinned = NatsTransport(self._nc, instance=random.choice(live))
        return await pinned.unary(method, payload, timeout_s - min(PING_WINDOW_S, timeout_s / 4), metadata)

    async def _responding_instances(self, service: str, window_s: float) -> list[str]:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        found: list[str] = []
        try:
            await self._nc.publish(f"$SRV.PING.bev-{service}", b"", reply=inbox)
            deadline = time.monotonic() + window_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except nats.errors.TimeoutError:
                    break
                try:
                    instance = json.loads(msg.data).get("metadata", {}).get("instance", "")
                except ValueError:
                    continue  # not a micro PING answer: ignore it
                if instance:
                    found.append(str(instance))
                    if len(found) >= PING_ENOUGH:
                        break
        finally:
            await sub.unsubscribe()
        return found

    async def stream(
        self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]
    ) -> AsyncIterator[bytes]:
        self._require_connection(method)
        deadline = time.monotonic() + timeout_s
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        finished = False
        try:
            try:
                await self._nc.publish(method.subject + self._suffix, payload, reply=inbox, headers=self._headers(timeout_s, metadata))
            except nats.errors.MaxPayloadError as exc:
                raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"request too large for the bus: {exc}") from exc
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"{method.subject} stream ran past {timeout_s:.3g}s")
                try:
                    msg = await sub.next_msg(timeout=remaining)
                except nats.errors.TimeoutError as exc:
                    raise RpcError(
                        StatusCode.DEADLINE_EXCEEDED, f"{method.subject} stream ran past {timeout_s:.3g}s"
                    ) from exc
                headers = msg.headers or {}
                if headers.get(STREAM_END_HEADER) or headers.get("Status"):
                    finished = True
                _raise_for_headers(headers, method.subject)
                if finished:
                    return
                yield msg.data
        finally:
            if not finished and not self._nc.is_closed:
                await self._nc.publish(f"{inbox}.cancel", b"")
            await sub.unsubscribe()

    async def close(self) -> None:
        """The NATS connection belongs to the caller; nothing to release here."""
