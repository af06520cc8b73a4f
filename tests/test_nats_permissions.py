"""Each service's NATS user may use its own subjects and call only the services it needs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hvac
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bev.bus import inbox_prefix
from bev.engines import NatsServer, NatsUser, OpenBao, free_port
from bev.engines.nats_server import nats_server_binary
from bev.manifest import load_manifest

async_test = pytest.mark.asyncio(loop_scope="session")
SERVICES = ("gateway", "avatar", "monitoring", "reasoning")
MANIFEST = load_manifest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    users = [NatsUser(f"bev-{s}", f"pw-{s}", MANIFEST.nats_permissions(s)) for s in SERVICES]
    with NatsServer(Path(tmp_path_factory.mktemp("nats")), user="bev", password="operator", users=users) as nats_server:
        yield nats_server


class Connected:
    def __init__(self, nc: NatsClient, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    async def violations(self) -> list[str]:
        await self.nc.flush()
        await asyncio.sleep(0.2)  # the server reports a violation asynchronously
        # nats-py lowercases the server's message, subject included
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


async def _connect(server: NatsServer, service: str) -> AsyncIterator[Connected]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(server.url, user=f"bev-{service}", password=f"pw-{service}", error_cb=on_error,
                            inbox_prefix=inbox_prefix(f"bev-{service}"), allow_reconnect=False)
    yield Connected(nc, errors)
    await nc.close()


@pytest.fixture
async def avatar(server: NatsServer) -> AsyncIterator[Connected]:
    async for connected in _connect(server, "avatar"):
        yield connected


@pytest.fixture
async def gateway(server: NatsServer) -> AsyncIterator[Connected]:
    async for connected in _connect(server, "gateway"):
        yield connected


def test_permissions_follow_the_declared_calls() -> None:
    fleet = set(MANIFEST.service_names())
    assert fleet == {"gateway", "reasoning", "embeddings", "swarm", "collectors", "avatar", "monitoring"}
    for service in fleet:
        publish = MANIFEST.nats_permissions(service)["publish"]["allow"]
        called = {subject.split(".")[1] for subject in publish
                  if subject.startswith("bev.") and "events" not in subject and subject != "bev.supervisor.>"}
        pinged = {subject.removeprefix("$SRV.PING.bev-") for subject in publish if subject.startswith("$SRV.PING.")}
        assert pinged == called, service  # a retry may ask its callees' replicas who is alive
        assert f"bev.events.{service}.>" in publish, service  # its own events, nobody else's
        assert called == set(MANIFEST.callees(service)), service
        assert ("$SRV.>" in publish) == (service == "monitoring"), service  # only `calls: all` discovers
        # ... and only it asks supervisors for restarts and reads JetStream's consumer info (lag).
        assert ("bev.supervisor.>" in publish) == (service == "monitoring"), service
        assert ("$JS.API.CONSUMER.INFO.>" in publish) == (service == "monitoring"), service
    assert set(MANIFEST.callees("monitoring")) == fleet
    assert MANIFEST.callees("avatar") == ("swarm",) and MANIFEST.callees("collectors") == ("embeddings",)
    for service in fleet:  # event subjects are heard only where the manifest says `listens`
        subscribe = MANIFEST.nats_permissions(service)["subscribe"]["allow"]
        heard = {subject.split(".")[2] for subject in subscribe if subject.startswith("bev.events.")}
        # Monitoring also hears the supervisors' fleet events (engine exits).
        assert heard == set(MANIFEST.services[service].listens) | ({"fleet"} if service == "monitoring" else set()), \
            service
    assert MANIFEST.services["avatar"].listens == ["investigation"] == MANIFEST.services["swarm"].listens


@async_test
async def test_a_caller_reaches_a_service_it_may_call(avatar: Connected, gateway: Connected) -> None:
    async def health(msg: Msg) -> None:
        await msg.respond(b"serving")

    await avatar.nc.subscribe("bev.avatar.v1.Health", queue="bev.avatar", cb=health)
    await avatar.nc.flush()
    reply = await gateway.nc.request("bev.avatar.v1.Health", b"", timeout=2)
    assert reply.data == b"serving"
    assert await avatar.violations() == [] and await gateway.violations() == []


@async_test
async def test_a_service_cannot_take_another_services_subjects(avatar: Connected) -> None:
    await avatar.nc.subscribe("bev.reasoning.v1.>")
    assert any("bev.reasoning.v1.>" in v for v in await avatar.violations())


@async_test
async def test_a_service_cannot_call_what_it_does_not_need(avatar: Connected) -> None:
    await avatar.nc.publish("bev.reasoning.v1.Generate", b"")
    assert any("bev.reasoning.v1.generate" in v for v in await avatar.violations())


@async_test
async def test_only_listeners_hear_investigation_events(avatar: Connected, gateway: Connected) -> None:
    await avatar.nc.subscribe("bev.events.investigation.>")
    await avatar.nc.subscribe("bev.events.audit.>")  # the audit log is not the avatar's to read
    await gateway.nc.subscribe("bev.events.investigation.>")
    await avatar.nc.flush()
    await gateway.nc.flush()
    assert any("bev.events.audit.>" in v for v in await avatar.violations())
    assert not any("investigation" in v for v in await avatar.violations())
    assert any("bev.events.investigation.>" in v for v in await gateway.violations())


@async_test
async def test_a_service_cannot_read_other_inboxes(avatar: Connected) -> None:
    await avatar.nc.subscribe("_INBOX.bev-gateway.>")  # replies meant for the gateway
    assert any("_inbox.bev-gateway.>" in v for v in await avatar.violations())


@async_test
async def test_only_monitoring_may_run_discovery(server: NatsServer, avatar: Connected) -> None:
    await avatar.nc.publish("$SRV.INFO", b"")
    assert any("$srv.info" in v for v in await avatar.violations())
    async for monitoring in _connect(server, "monitoring"):
        await monitoring.nc.publish("$SRV.INFO", b"")
        assert await monitoring.violations() == []


def test_production_users_file_from_vault(openbao_server: OpenBao, tmp_path: Path) -> None:
    """`bev deploy nats-auth` writes users nats-server accepts, with the same permissions as above."""
    client = hvac.Client(url=openbao_server.addr, token=openbao_server.root_token)
    for name in ("operator", *MANIFEST.service_names()):
        client.secrets.kv.v2.create_or_update_secret(
            path=f"bev/nats/{name}", secret={"user": f"bev-{name}", "password": f"pw-{name}"}, mount_point="secret")
    out = tmp_path / "secrets" / "nats-auth.conf"
    env = {**os.environ, "BEV_VAULT__ADDR": openbao_server.addr, "BEV_VAULT__TOKEN": openbao_server.root_token}
    result = subprocess.run([str(Path(sys.executable).parent / "bev"), "deploy", "nats-auth", str(out)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    text = out.read_text()
    for service in MANIFEST.service_names():
        assert json.dumps(MANIFEST.nats_permissions(service)) in text
    conf = tmp_path / "nats.conf"
    conf.write_text(f"listen: 127.0.0.1:{free_port()}\ninclude ./secrets/nats-auth.conf\n")
    checked = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
