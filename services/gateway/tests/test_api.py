"""The gateway's HTTP edge over real HTTP and a real nats-server, in front of a real servicer
(avatar), behind the real guard (keys in PostgreSQL, limits in Redis): answers, error shapes (4xx
with a message, 503 with the cause when no instance serves), body limits, and the clients derived
from the gateway's manifest entry."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.engines import NatsServer, Redis
from bev.manifest import load_manifest
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import assemble
from services.avatar.settings import AvatarConfig
from services.gateway.clients import Clients, ClientsMismatch
from services.gateway.testing import gateway_on_free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

SPEAK = "/api/v1/avatar/speak"  # a cheap route with a JSON body


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A bus of this module's own: services other tests serve on the session's must not answer here."""
    with NatsServer(tmp_path_factory.mktemp("gateway-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(own_nats: NatsServer, fresh_database: Callable[[], str],
                  redis_server: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with only the avatar service behind it, called with its admin key. Its speech
    route (espeak-ng, a few ms) is the one used: the others ask the swarm, which is not served here."""
    avatar_nc = await nats.connect(own_nats.url)  # the avatar's own, as its process has
    avatar = await assemble(InstanceInfo(service="avatar"), AvatarConfig(), avatar_nc)
    try:
        async with serving_on_nats(avatar, own_nats.url) as nc, \
                gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
            yield http
    finally:
        await avatar_nc.close()


async def test_a_route_answers_through_its_service(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(SPEAK, json={"text": "ok"})
    assert response.status_code == 200, response.text
    speech = response.json()
    assert base64.b64decode(speech["audio_wav_base64"]).startswith(b"RIFF") and speech["duration_ms"] > 0
    assert speech["visemes"][0]["start_ms"] == 0 and speech["visemes"][-1]["end_ms"] == speech["duration_ms"]


async def test_bad_input_is_a_4xx_with_a_message(gateway: httpx.AsyncClient) -> None:
    # Refused by the route itself.
    unknown = await gateway.post(SPEAK, json={"text": "ok", "personality": "grumpy"})
    assert unknown.status_code == 400 and "grumpy" in unknown.json()["error"]
    # Refused by the service itself (INVALID_ARGUMENT), mapped to 400 with its message and code: a
    # bell character passes the route's "not blank" but leaves nothing to say.
    unspeakable = await gateway.post(SPEAK, json={"text": "\u0007"})
    assert unspeakable.status_code == 400, unspeakable.text
    assert unspeakable.json() == {"error": "text is required", "code": "INVALID_ARGUMENT"}
    missing = await gateway.post(SPEAK, json={"personality": "mentor"})
    assert missing.status_code == 422


async def test_a_service_with_no_instance_is_503_at_once(gateway: httpx.AsyncClient) -> None:
    began = time.monotonic()
    response = await gateway.get("/api/v1/reasoning/router")
    assert response.status_code == 503
    assert response.json()["code"] == "UNAVAILABLE" and response.json()["error"]
    assert time.monotonic() - began < 2  # no responders: not a wait for the deadline


async def test_fleet_health_without_monitoring_is_503(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/healthz", headers={"Authorization": ""})  # open: no key needed
    assert response.status_code == 503 and response.json()["code"] == "UNAVAILABLE"


async def test_oversized_bodies_are_413(gateway: httpx.AsyncClient) -> None:
    big = b'{"text": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    declared = await gateway.post(SPEAK, content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 65536

    streamed = await gateway.post(SPEAK, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


async def test_clients_follow_the_gateways_manifest_entry(nats_client: NatsClient) -> None:
    callees = load_manifest().callees("gateway")
    clients = Clients.over_nats(nats_client, 5, callees)
    assert {getattr(clients, name).SERVICE.name for name in callees} == set(callees)
    with pytest.raises(ClientsMismatch, match=r"declare the call in deploy/manifest\.yaml"):
        Clients.over_nats(nats_client, 5, [c for c in callees if c != "swarm"])
