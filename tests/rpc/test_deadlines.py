"""Deadlines come from each method's proto option; an idempotent call meeting a silent or vanished
instance is retried once within the same deadline; nothing waits past its deadline; with the bus
down a call fails at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import REGISTRY

from bev.echo.v1 import echo_pb2
from bev.echo.v1.echo_rpc import EchoClient
from bev.engines import NatsServer
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.rpc.dispatch import Dispatcher
from bev.testing.serving import serving_on_nats
from tests.rpc.echo import Echo

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Silent:
    """A replica in Echo's queue group that takes requests and never answers (frozen, or killed mid-call)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.sub: Subscription | None = None

    async def handle(self, msg: Msg) -> None:
        self.received.append(msg.subject)


@pytest_asyncio.fixture
async def silent(nats_server: NatsServer) -> AsyncIterator[Silent]:
    replica = Silent()
    nc = await nats.connect(nats_server.url)
    # The queue group's subjects only (one token after v1): addressed to no instance, like a replica
    # whose own instance subjects nobody knows.
    replica.sub = await nc.subscribe("bev.echo.v1.*", queue="bev.echo", cb=replica.handle)
    await nc.flush()
    yield replica
    await nc.close()


def _retries(method: str) -> float:
    return REGISTRY.get_sample_value("bev_rpc_client_retries_total",
                                     {"service": "echo", "method": method, "code": "DEADLINE_EXCEEDED"}) or 0.0


async def test_deadlines_and_retry_policy_come_from_the_proto() -> None:
    methods = EchoClient.SERVICE.methods
    assert (methods["Echo"].deadline_s, methods["Echo"].idempotent) == (10, True)
    assert (methods["Sleep"].deadline_s, methods["Sleep"].idempotent) == (60, False)


async def test_a_silent_replica_costs_a_retry_not_a_failure(silent: Silent, nats_server: NatsServer) -> None:
    # Two live replicas and a silent one: the queue group picks at random; a retry goes to a
    # replica that answers $SRV.PING, which the silent one never does.
    async with serving_on_nats(Echo(InstanceInfo(service="echo")), nats_server.url) as nc, \
            serving_on_nats(Echo(InstanceInfo(service="echo")), nats_server.url):
        client = EchoClient.over_nats(nc)
        before, failures = _retries("Echo"), 0
        for _ in range(18):
            began = time.monotonic()
            try:
                reply = await client.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout_s=1.0)
            except RpcError as exc:
                assert exc.code == StatusCode.DEADLINE_EXCEEDED
                failures += 1
            else:
                assert reply.payload == b"x"
            assert time.monotonic() - began < 1.2  # never past the deadline
    assert silent.received, "the queue group never picked the silent replica"
    assert failures == 0  # every lost attempt was recovered
    assert _retries("Echo") - before == len(silent.received)  # each was sent again, elsewhere


async def test_only_a_silent_replica_fails_within_the_deadline(silent: Silent, nats_client: nats.NATS) -> None:
    client = EchoClient.over_nats(nats_client)
    began = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await client.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout_s=1.0)
    assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
    assert 0.9 < time.monotonic() - began < 1.3
    assert len(silent.received) == 2  # idempotent: tried twice, within the one deadline

    silent.received.clear()
    with pytest.raises(RpcError):
        await client.Sleep(echo_pb2.SleepRequest(seconds=0), timeout_s=0.5)
    assert len(silent.received) == 1  # not idempotent: never sent twice


async def test_with_the_bus_down_a_call_fails_at_once(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=1)
        client = EchoClient.over_nats(nc)
    for _ in range(100):  # the client notices the closed socket within a few ms
        if nc.is_reconnecting:
            break
        await asyncio.sleep(0.02)
    began = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await client.Echo(echo_pb2.EchoRequest(payload=b"x"))
    assert caught.value.code == StatusCode.UNAVAILABLE and "NATS" in caught.value.message
    assert time.monotonic() - began < 0.5
    with pytest.raises(RpcError) as streaming:
        async for _ in client.EchoStream(echo_pb2.EchoRequest(payload=b"x", repeat=2)):
            pass
    assert streaming.value.code == StatusCode.UNAVAILABLE
    await nc.close()


# --- the server's deadline timer, armed only when a handler suspends (bev.rpc.dispatch) -----------

def _dispatcher() -> Dispatcher:
    return Dispatcher(Echo(InstanceInfo(service="echo")), max_request_bytes=1024, default_timeout_s=10)


async def _unary(dispatcher: Dispatcher, method: str, request: Message, timeout_s: float) -> bytes:
    definition = dispatcher.service.methods[method]
    return await dispatcher.unary(definition, request.SerializeToString(),
                                  dispatcher.context(definition, "nats", timeout_s, {}))


async def test_a_handler_that_never_suspends_answers_without_a_timer() -> None:
    # As before the timer moved: a handler that does not await cannot be interrupted, so even a
    # deadline already spent lets it answer (the caller has stopped waiting; nothing waits on it).
    reply = echo_pb2.EchoResponse.FromString(
        await _unary(_dispatcher(), "Echo", echo_pb2.EchoRequest(payload=b"now"), timeout_s=0))
    assert reply.payload == b"now"


async def test_a_handler_that_suspends_runs_under_the_deadline() -> None:
    dispatcher = _dispatcher()
    # Suspends on a bare yield (asyncio.sleep(0)) and on a timer future: the result still comes back.
    for seconds in (0.0, 0.01):
        reply = echo_pb2.SleepResponse.FromString(
            await _unary(dispatcher, "Sleep", echo_pb2.SleepRequest(seconds=seconds), timeout_s=2))
        assert 1.5 < reply.remaining_s <= 2
    began = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await _unary(dispatcher, "Sleep", echo_pb2.SleepRequest(seconds=5), timeout_s=0.1)
    assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 0.5
    assert REGISTRY.get_sample_value("bev_rpc_requests_total", {
        "service": "echo", "method": "Sleep", "transport": "nats", "code": "DEADLINE_EXCEEDED"}) >= 1


async def test_cancelling_a_suspended_call_cancels_its_handler() -> None:
    # Server shutdown cancels in-flight calls: the cancellation reaches the handler and is not
    # turned into a status (nobody is left to answer).
    task = asyncio.create_task(_unary(_dispatcher(), "Sleep", echo_pb2.SleepRequest(seconds=5), timeout_s=10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert REGISTRY.get_sample_value("bev_rpc_in_flight", {
        "service": "echo", "method": "Sleep", "transport": "nats"}) == 0
