"""bev.rpc.while_starting over a real nats-server: a call that finds no instance of its service waits
for one (the fleet is starting or restarting); an answer, even an error, is never asked again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from bev.echo.v1 import echo_pb2
from bev.echo.v1.echo_rpc import EchoClient
from bev.engines import NatsServer
from bev.rpc import InstanceInfo, RpcError, StatusCode, not_serving_yet, while_starting
from bev.rpc.errors import code_to_int
from bev.rpc.nats_transport import NatsRpcServer
from tests.rpc.echo import Echo

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_call_waits_for_its_service_to_start_serving(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as server:
        server_nc, client_nc = await nats.connect(server.url), await nats.connect(server.url)
        echo = Echo(InstanceInfo(service="echo"))
        rpc = NatsRpcServer(server_nc, echo, max_request_bytes=1024, default_timeout_s=5, max_concurrency=4,
                            instance=echo.info.instance)
        client = EchoClient.over_nats(client_nc, timeout_s=5)
        attempts = 0

        async def call() -> echo_pb2.EchoResponse:
            nonlocal attempts
            attempts += 1
            return await client.Echo(echo_pb2.EchoRequest(payload=b"late"))

        async def serve_later() -> None:
            await asyncio.sleep(0.6)
            await rpc.start()

        began = time.monotonic()
        starting = asyncio.create_task(serve_later())
        answer = await while_starting(call, waits=(0.25, 0.25, 0.25, 0.25, 0.25))
        await starting
        assert answer.payload == b"late" and attempts >= 2 and time.monotonic() - began >= 0.6

        # An instance that answers with an error is not waited for, UNAVAILABLE included.
        attempts = 0

        async def fail() -> echo_pb2.EchoResponse:
            nonlocal attempts
            attempts += 1
            return await client.Fail(echo_pb2.FailRequest(code=code_to_int(StatusCode.UNAVAILABLE), message="busy"))

        with pytest.raises(RpcError) as failed:
            await while_starting(fail, waits=(0.25, 0.25))
        assert failed.value.message == "busy" and not not_serving_yet(failed.value) and attempts == 1

        # Nobody ever serves: after the last wait the call fails, saying so.
        await rpc.stop(grace_s=1)
        began = time.monotonic()
        with pytest.raises(RpcError) as never:
            await while_starting(lambda: client.Echo(echo_pb2.EchoRequest(payload=b"x")), waits=(0.1, 0.1))
        assert not_serving_yet(never.value) and never.value.code == StatusCode.UNAVAILABLE
        assert 0.2 <= time.monotonic() - began < 2
        await server_nc.close()
        await client_nc.close()
