"""End to end: `bev up` (what `make run` runs) brings the whole fleet up; every service answers
through the gateway and over gRPC; `bev status` lists all seven; a killed service comes back; Ctrl-C
stops everything. With `--bev-live DATA_DIR` the same tests run against an already running fleet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.avatar.v1 import avatar_pb2
from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.fleet import client_for, discover
from bev.manifest import load_manifest
from bev.monitoring.v1 import monitoring_pb2
from bev.reasoning.v1 import reasoning_pb2
from bev.rpc.grpc_transport import GrpcTransport
from bev.swarm.v1 import swarm_pb2

pytestmark = pytest.mark.slow
async_test = pytest.mark.asyncio(loop_scope="module")

BEV = Path(sys.executable).parent / "bev"
START_TIMEOUT_S = 180  # the bar: healthy within 3 minutes on 2 cores
FLEET = load_manifest().service_names()


@dataclass
class Fleet:
    data_dir: Path
    process: subprocess.Popen[bytes] | None
    state: dict[str, Any]
    output: Path

    @property
    def gateway(self) -> str:
        return str(self.state["gateway"])


def _wait_for_fleet(data_dir: Path, process: subprocess.Popen[bytes], output: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"bev up exited with {process.returncode}:\n{output.read_text()[-3000:]}")
        if "fleet up in" in output.read_text():
            return dict(json.loads((data_dir / "run" / "fleet.json").read_text()))
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    pytest.fail(f"fleet not up within {START_TIMEOUT_S}s:\n{output.read_text()[-3000:]}")


def start_fleet(data_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`bev up --free-ports` on `data_dir` (plus `args`), output in data_dir/up.log; returns once the
    fleet is healthy, with its fleet.json (the test fails with the output's tail otherwise)."""
    output = data_dir / "up.log"
    with output.open("wb") as out:
        process = subprocess.Popen([str(BEV), "up", "--data-dir", str(data_dir), "--free-ports", *args],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})})
    return process, _wait_for_fleet(data_dir, process, output)


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    live = request.config.getoption("--bev-live")
    if live:
        data_dir = Path(live)
        yield Fleet(data_dir, None, json.loads((data_dir / "run" / "fleet.json").read_text()), data_dir / "up.log")
        return
    data_dir = tmp_path_factory.mktemp("fleet")
    started = time.monotonic()
    process, state = start_fleet(data_dir)
    print(f"fleet healthy in {time.monotonic() - started:.1f}s")
    yield Fleet(data_dir, process, state, data_dir / "up.log")
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bus(fleet: Fleet) -> AsyncIterator[NatsClient]:
    creds = fleet.state["nats"]
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"])
    yield nc
    await nc.close()


def test_bev_status_lists_all_seven(fleet: Fleet) -> None:
    result = subprocess.run([str(BEV), "status", "--json", "--data-dir", str(fleet.data_dir)],
                            capture_output=True, text=True, timeout=30, check=True)
    instances = json.loads(result.stdout)["instances"]
    assert {i["service"] for i in instances} == set(FLEET)
    assert all(i["state"] == "serving" for i in instances), instances
    table = subprocess.run([str(BEV), "status", "--data-dir", str(fleet.data_dir)],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    for service in FLEET:
        assert service in table


def test_gateway_health_and_services(fleet: Fleet) -> None:
    health = httpx.get(f"{fleet.gateway}/healthz", timeout=15)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "serving"
    services = httpx.get(f"{fleet.gateway}/api/v1/services", timeout=15).json()
    assert {i["service"] for i in services["instances"]} == set(FLEET)


def test_every_service_through_the_gateway(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.gateway, timeout=60) as http:
        generated = http.post("/api/v1/reasoning/generate", json={"prompt": "Name one OSINT source.", "max_tokens": 16})
        assert generated.status_code == 200, generated.text
        body = generated.json()
        assert body["text"].strip() and body["usage"]["completion_tokens"] > 0 and body["backend"] == "llama.cpp"

        embedded = http.post("/api/v1/embeddings/embed", json={"texts": ["ransomware group", "phishing kit"]})
        assert embedded.status_code == 200, embedded.text
        vectors = embedded.json()["vectors"]
        assert len(vectors) == 2 and len(vectors[0]["values"]) == 384

        extracted = http.post("/api/v1/indicators/extract", json={"text": "beacon to hxxps://bad-actor[.]ru/x from 10.1.2.3"})
        assert extracted.status_code == 200, extracted.text
        found = {(i["type"], i["value"]) for i in extracted.json()["indicators"]}
        assert ("ipv4", "10.1.2.3") in found and ("domain", "bad-actor.ru") in found

        roles = http.get("/api/v1/swarm/roles", params={"phase": "synthesis"})
        assert roles.status_code == 200, roles.text
        assert roles.json()["roles"]

        expression = http.post("/api/v1/avatar/state", json={"session_id": "e2e", "state": "collecting", "progress": 0.2})
        assert expression.status_code == 200, expression.text
        assert expression.json()["emotion"]


def test_gateway_rejects_bad_input_with_4xx(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.gateway, timeout=30) as http:
        assert http.post("/api/v1/reasoning/generate", json={"prompt": ""}).status_code == 422
        assert http.post("/api/v1/embeddings/embed", json={"texts": "not a list"}).status_code == 422
        bad_state = http.post("/api/v1/avatar/state", json={"session_id": "x", "state": "sleeping"})
        assert bad_state.status_code == 400 and "sleeping" in bad_state.json()["error"]
        forbidden = http.post("/api/v1/avatar/state", json={"session_id": "fsm", "state": "reporting"})
        assert forbidden.status_code == 409, forbidden.text  # idle -> reporting is not a transition
        assert http.get("/api/v1/swarm/roles", params={"phase": "lunch"}).status_code == 400
        too_big = http.post("/api/v1/indicators/extract", content=b'{"text": "' + b"a" * (2 * 1024 * 1024) + b'"}',
                            headers={"content-type": "application/json"})
        assert too_big.status_code == 413


@async_test
async def test_every_service_over_grpc(bus: NatsClient) -> None:
    instances = {i.service: i for i in await discover(bus, 1.0)}
    calls = {
        "reasoning": ("Generate", reasoning_pb2.GenerateRequest(prompt="Say hi.", max_tokens=8)),
        "embeddings": ("Embed", embeddings_pb2.EmbedRequest(texts=["hello"])),
        "collectors": ("Extract", collectors_pb2.ExtractRequest(text="CVE-2021-44228 on 192.0.2.7")),
        "swarm": ("ListRoles", swarm_pb2.ListRolesRequest()),
        "avatar": ("MapState", avatar_pb2.MapStateRequest(session_id="grpc", state=avatar_pb2.RESEARCH_STATE_COLLECTING)),
        "monitoring": ("FleetHealth", monitoring_pb2.FleetHealthRequest(timeout_s=1.0)),
        "gateway": ("Health", common_pb2.HealthRequest()),
    }
    for service, (method, request) in calls.items():
        transport = GrpcTransport(instances[service].grpc_address)
        client = client_for(service, transport)
        try:
            response = await getattr(client, method)(request, timeout_s=60)
            health = await client.Health(common_pb2.HealthRequest(), timeout_s=10)
        finally:
            await client.close()
        assert response.ByteSize() > 0, service
        assert health.status == common_pb2.HealthResponse.STATUS_SERVING and health.service == service


@async_test
async def test_killed_service_is_restarted_and_reported(fleet: Fleet, bus: NatsClient) -> None:
    if fleet.process is None:
        pytest.skip("does not kill services of a live fleet")
    before = {i.service: i for i in await discover(bus, 1.0)}["avatar"]
    os.kill(int(fleet.state["services"]["avatar"]["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 60
    after = None
    while time.monotonic() < deadline:
        live = [i for i in await discover(bus, 0.5) if i.service == "avatar" and i.state == "serving"]
        if live and live[0].instance != before.instance:
            after = live[0]
            break
    assert after is not None, "avatar did not come back within 60 s"
    js = bus.jetstream()
    event = await js.get_last_msg("BEV_EVENTS", "bev.events.fleet.service_exited")
    data = json.loads(event.data)
    assert data["service"] == "avatar" and data["code"] == -signal.SIGKILL


def test_ctrl_c_stops_everything(fleet: Fleet) -> None:
    if fleet.process is None:
        pytest.skip("does not stop a live fleet")
    pids = [int(p["pid"]) for p in fleet.state["engines"].values() if p["pid"]]
    fleet.process.send_signal(signal.SIGINT)
    assert fleet.process.wait(60) == 0, fleet.output.read_text()[-2000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (fleet.data_dir / "run" / "fleet.json").exists()
