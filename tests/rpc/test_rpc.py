"""The RPC layer against a real nats-server and a real grpc.aio server, on both transports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from prometheus_client import REGISTRY

from bev.common.v1 import common_pb2
from bev.echo.v1 import echo_pb2
from bev.echo.v1.echo_rpc import EchoClient
from bev.rpc import RpcError, StatusCode
from bev.rpc.grpc_transport import GrpcTransport
from bev.rpc.nats_transport import NatsTransport
from tests.rpc.echo import ECHO_MAX_REQUEST_BYTES, EchoEndpoints

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["nats", "grpc"])
async def client(request: pytest.FixtureRequest, echo_service: EchoEndpoints) -> AsyncIterator[EchoClient]:
    if request.param == "nats":
        yield EchoClient.over_nats(echo_service.nc, timeout_s=5)
    else:
        c = EchoClient.over_grpc(echo_service.grpc_address, timeout_s=5)
        yield c
        await c.close()


async def test_unary_round_trip(client: EchoClient) -> None:
    response = await client.Echo(echo_pb2.EchoRequest(payload=b"hello \x00 bytes"))
    assert response.payload == b"hello \x00 bytes"


async def test_server_streaming_delivers_every_message_in_order(client: EchoClient) -> None:
    got = [m.index async for m in client.EchoStream(echo_pb2.EchoRequest(payload=b"x", repeat=200))]
    assert got == list(range(200))


async def test_empty_stream_ends_cleanly(client: EchoClient) -> None:
    assert [m async for m in client.EchoStream(echo_pb2.EchoRequest(repeat=0))] == []


@pytest.mark.parametrize("code", [StatusCode.NOT_FOUND, StatusCode.PERMISSION_DENIED, StatusCode.FAILED_PRECONDITION])
async def test_handler_status_reaches_caller(client: EchoClient, code: StatusCode) -> None:
    with pytest.raises(RpcError) as caught:
        await client.Fail(echo_pb2.FailRequest(code=code.value[0], message="target is out of scope"))
    assert caught.value.code == code
    assert caught.value.message == "target is out of scope"


async def test_unexpected_exception_is_internal_with_message(client: EchoClient) -> None:
    started = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await client.Fail(echo_pb2.FailRequest(raise_unexpected=True, message="boom"))
    assert caught.value.code == StatusCode.INTERNAL
    assert "ValueError: boom" in caught.value.message
    assert time.monotonic() - started < 1.0  # answered, not hung until the deadline


async def test_deadline_exceeded_and_propagated(client: EchoClient) -> None:
    started = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await client.Sleep(echo_pb2.SleepRequest(seconds=3), timeout_s=0.3)
    assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    # The server sees the caller's deadline, not its own default (10 s).
    response = await client.Sleep(echo_pb2.SleepRequest(seconds=0), timeout_s=2.0)
    assert 1.0 < response.remaining_s <= 2.05


async def test_oversize_request_is_resource_exhausted(client: EchoClient) -> None:
    with pytest.raises(RpcError) as caught:
        await client.Echo(echo_pb2.EchoRequest(payload=b"x" * (ECHO_MAX_REQUEST_BYTES + 10)))
    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED


async def test_trace_context_propagates(client: EchoClient) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("analyst-request") as span:
        info = await client.WhoAmI(echo_pb2.EchoRequest())
    assert info.trace_id == format(span.get_span_context().trace_id, "032x")


async def test_health_answers_serving(client: EchoClient) -> None:
    health = await client.Health(common_pb2.HealthRequest())
    assert health.status == common_pb2.HealthResponse.STATUS_SERVING
    assert health.service == "echo"
    assert health.uptime_s >= 0


async def test_slow_call_does_not_block_others(client: EchoClient) -> None:
    slow = asyncio.create_task(client.Sleep(echo_pb2.SleepRequest(seconds=1.0)))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await client.Echo(echo_pb2.EchoRequest(payload=b"fast"))
    assert time.monotonic() - started < 0.5
    await slow


async def test_no_responder_fails_fast_with_unavailable(echo_service: EchoEndpoints) -> None:
    client = EchoClient(NatsTransport(echo_service.nc, instance="no-such-instance"), timeout_s=10)
    started = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await client.Echo(echo_pb2.EchoRequest())
    assert caught.value.code == StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 0.5
    with pytest.raises(RpcError) as caught:
        _ = [m async for m in client.EchoStream(echo_pb2.EchoRequest(repeat=3))]
    assert caught.value.code == StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 1.0


async def test_garbage_bytes_get_invalid_argument_and_service_stays_up(echo_service: EchoEndpoints) -> None:
    nc = echo_service.nc
    reply = await nc.request("bev.echo.v1.Echo", b"\xff\xff\xff\xff\xff", timeout=2)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == str(StatusCode.INVALID_ARGUMENT.value[0])
    assert "not a valid EchoRequest" in reply.headers["Nats-Service-Error"]
    # The same garbage over gRPC.
    async with grpc.aio.insecure_channel(echo_service.grpc_address) as channel:
        call = channel.unary_unary("/bev.echo.v1.Echo/Echo")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff\xff\xff", timeout=2)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    response = await EchoClient.over_nats(nc).Echo(echo_pb2.EchoRequest(payload=b"still here"))
    assert response.payload == b"still here"


async def test_abandoned_stream_is_cancelled_on_the_server(echo_service: EchoEndpoints) -> None:
    client = EchoClient.over_nats(echo_service.nc)
    stream = client.EchoStream(echo_pb2.EchoRequest(payload=b"x", repeat=1_000_000))
    first = []
    async for message in stream:
        first.append(message.index)
        if len(first) == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert first == [0, 1, 2]
    in_flight = None
    for _ in range(100):
        in_flight = REGISTRY.get_sample_value(
            "bev_rpc_in_flight", {"service": "echo", "method": "EchoStream", "transport": "nats"})
        if in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert in_flight == 0


async def test_instance_addressed_call_reaches_that_replica(echo_service: EchoEndpoints) -> None:
    client = EchoClient(NatsTransport(echo_service.nc, instance=echo_service.instance))
    health = await client.Health(common_pb2.HealthRequest())
    assert health.instance == echo_service.instance


async def test_registered_for_srv_discovery(echo_service: EchoEndpoints) -> None:
    nc = echo_service.nc
    ping = json.loads((await nc.request("$SRV.PING.bev-echo", b"", timeout=2)).data)
    assert ping["name"] == "bev-echo"
    info = json.loads((await nc.request("$SRV.INFO.bev-echo", b"", timeout=2)).data)
    subjects = {e["subject"] for e in info["endpoints"]}
    assert {"bev.echo.v1.Echo", "bev.echo.v1.EchoStream", "bev.echo.v1.Health"} <= subjects
    assert {e["queue_group"] for e in info["endpoints"]} == {"bev.echo"}
    with pytest.raises(RpcError):
        await EchoClient.over_nats(nc).Fail(echo_pb2.FailRequest(code=5, message="counted"))
    stats = json.loads((await nc.request("$SRV.STATS.bev-echo", b"", timeout=2)).data)
    fail = next(e for e in stats["endpoints"] if e["name"] == "Fail")
    assert fail["num_requests"] >= 1 and fail["data"]["requests"] >= 1
    assert fail["data"]["errors"] >= 1


async def test_grpc_health_and_reflection(echo_service: EchoEndpoints) -> None:
    async with grpc.aio.insecure_channel(echo_service.grpc_address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bev.echo.v1.Echo"), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for response in stub.ServerReflectionInfo(one_request(), timeout=2):
            names |= {s.name for s in response.list_services_response.service}
        assert "bev.echo.v1.Echo" in names


async def test_metrics_count_calls_and_errors(echo_service: EchoEndpoints) -> None:
    labels = {"service": "echo", "method": "Fail", "transport": "grpc", "code": "NOT_FOUND"}
    before = REGISTRY.get_sample_value("bev_rpc_errors_total", labels) or 0.0
    client = GrpcTransport(echo_service.grpc_address)
    with pytest.raises(RpcError):
        await EchoClient(client).Fail(echo_pb2.FailRequest(code=5, message="x"))
    await client.close()
    assert REGISTRY.get_sample_value("bev_rpc_errors_total", labels) == before + 1
    count = REGISTRY.get_sample_value(
        "bev_rpc_latency_seconds_count", {"service": "echo", "method": "Fail", "transport": "grpc"})
    assert count is not None and count >= 1
