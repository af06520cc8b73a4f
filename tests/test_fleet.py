"""End to end: `bev up` (what `make run` runs) brings the whole fleet up; every service answers
through the gateway and over gRPC; `bev status` lists all seven; the gateway answers nothing but
/healthz without an API key, and keys made with `bev keys` carry their scopes, are refused once
revoked and leave an audit trail; a killed service comes back; Ctrl-C stops everything. With
`--bev-live DATA_DIR` the same tests run against an already running fleet."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.access.keys import BOOTSTRAP_ID, PREFIX
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
KEY_CACHE_S = 5.0  # how long a gateway trusts a verified key (GatewayConfig.key_cache_s)


def bearer(key: str) -> dict[str, str]:
    """The header an API key travels in."""
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Fleet:
    data_dir: Path
    process: subprocess.Popen[bytes] | None
    state: dict[str, Any]
    output: Path

    @property
    def gateway(self) -> str:
        return str(self.state["gateway"])

    @property
    def api_key(self) -> str:
        """The fleet's bootstrap admin key (`api_key` in run/fleet.json)."""
        return str(self.state["api_key"])

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.api_key)


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
    services = httpx.get(f"{fleet.gateway}/api/v1/services", headers=fleet.auth, timeout=15).json()
    assert {i["service"] for i in services["instances"]} == set(FLEET)


def test_every_service_through_the_gateway(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.gateway, headers=fleet.auth, timeout=60) as http:
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

        speech = http.post("/api/v1/avatar/speak", json={"text": "Found it.", "personality": "mentor"})
        assert speech.status_code == 200, speech.text
        assert speech.json()["audio_wav_base64"] and speech.json()["visemes"][-1]["end_ms"] == speech.json()["duration_ms"]


def test_gateway_rejects_bad_input_with_4xx(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.gateway, headers=fleet.auth, timeout=30) as http:
        assert http.post("/api/v1/reasoning/generate", json={"prompt": ""}).status_code == 422
        assert http.post("/api/v1/embeddings/embed", json={"texts": "not a list"}).status_code == 422
        grumpy = http.put("/api/v1/avatar/x/personality", json={"personality": "grumpy"})
        assert grumpy.status_code == 400 and "grumpy" in grumpy.json()["error"]
        assert http.post("/api/v1/avatar/speak", json={"text": "a" * 401}).status_code == 422
        unknown = http.get("/api/v1/avatar/no-such-investigation/state")  # the swarm knows no such investigation
        assert unknown.status_code == 404, unknown.text
        assert http.get("/api/v1/swarm/roles", params={"phase": "lunch"}).status_code == 400
        too_big = http.post("/api/v1/indicators/extract", content=b'{"text": "' + b"a" * (2 * 1024 * 1024) + b'"}',
                            headers={"content-type": "application/json"})
        assert too_big.status_code == 413


def test_fleet_file_is_private_and_holds_the_admin_key(fleet: Fleet) -> None:
    fleet_file = fleet.data_dir / "run" / "fleet.json"
    assert stat.S_IMODE(fleet_file.stat().st_mode) == 0o600  # the admin key and Vault's root token are in it
    assert fleet.api_key.startswith(f"{PREFIX}{BOOTSTRAP_ID}_") and len(fleet.api_key) > 40


def test_nothing_but_healthz_answers_without_a_valid_key(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.gateway, timeout=15, trust_env=False) as http:
        missing = http.get("/api/v1/services")
        assert missing.status_code == 401, missing.text
        assert missing.json()["code"] == "UNAUTHENTICATED" and missing.json()["error"]
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong_secret = http.get("/api/v1/services", headers=bearer(f"{PREFIX}{BOOTSTRAP_ID}_{'A' * 43}"))
        unknown = http.get("/api/v1/services", headers=bearer(f"{PREFIX}nosuchkey_{'A' * 43}"))
        not_bearer = http.get("/api/v1/services", headers={"Authorization": f"Basic {fleet.api_key}"})
        for refused in (wrong_secret, unknown, not_bearer):
            assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHENTICATED", refused.text
        # Not even whether a path exists, nor the schema, is told to a caller without a key.
        assert http.get("/api/v1/no-such-route").status_code == 401
        assert http.get("/openapi.json").status_code == 401
        granted = http.get("/api/v1/services", headers=fleet.auth)
        assert granted.status_code == 200, granted.text
        limit, remaining = int(granted.headers["RateLimit-Limit"]), int(granted.headers["RateLimit-Remaining"])
        assert 0 <= remaining < limit
        schema = http.get("/openapi.json", headers=fleet.auth)
        assert schema.status_code == 200 and "/api/v1/keys" in schema.json()["paths"]
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "serving"


def bev_keys(fleet: Fleet, *args: str) -> dict[str, Any]:
    """`bev keys ... --json` against the fleet (through its Vault, as an operator runs it)."""
    result = subprocess.run([str(BEV), "keys", *args, "--json", "--data-dir", str(fleet.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout))


def test_a_cli_key_keeps_to_its_scope_stops_once_revoked_and_is_audited(fleet: Fleet) -> None:
    created = bev_keys(fleet, "create", "e2e reader", "--scopes", "read", "--team", "blue")
    key, key_id = str(created["key"]), str(created["id"])
    assert key.startswith(f"{PREFIX}{key_id}_") and created["scopes"] == ["read"] and created["team"] == "blue"
    # Probed after the revocation: a path of its own, by which the audit log's 401 is found.
    probe = f"/api/v1/investigations/{uuid.uuid4().hex}"
    with httpx.Client(base_url=fleet.gateway, timeout=30, trust_env=False) as http:
        assert http.get("/api/v1/services", headers=bearer(key)).status_code == 200
        denied = http.post("/api/v1/investigations", headers=bearer(key), json={"target": "example.com"})
        assert denied.status_code == 403 and denied.json()["code"] == "PERMISSION_DENIED", denied.text
        assert "'write'" in denied.json()["error"]

        revoked = bev_keys(fleet, "revoke", key_id)
        assert revoked["id"] == key_id and revoked["state"] == "revoked"
        # Another process revoked it: the gateway notices once its cached verification expires.
        deadline = time.monotonic() + KEY_CACHE_S + 3
        while (answer := http.get(probe, headers=bearer(key))).status_code != 401:
            assert time.monotonic() < deadline, f"revoked key still let in: {answer.status_code} {answer.text}"
            time.sleep(0.25)
        assert answer.json()["error"] == f"API key {key_id} is revoked"

        # The audit log (admin only) has both refusals; entries are written just after each answer.
        assert http.get("/api/v1/audit", headers=bearer(key)).status_code == 401
        deadline = time.monotonic() + 10
        while True:
            own = http.get("/api/v1/audit", headers=fleet.auth, params={"key_id": key_id}).json()["entries"]
            unauthenticated = http.get("/api/v1/audit", headers=fleet.auth,
                                       params={"status": 401, "limit": 500}).json()["entries"]
            forbidden = [e for e in own if e["status"] == 403]
            after_revocation = [e for e in unauthenticated if e["path"] == probe]
            if (forbidden and after_revocation) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert [(e["method"], e["route"], e["team"]) for e in forbidden] == [("POST", "/api/v1/investigations", "blue")]
        assert after_revocation and {(e["method"], e["status"]) for e in after_revocation} == {("GET", 401)}


def test_bev_import_attack_fills_the_graph_through_the_fleet(fleet: Fleet) -> None:
    """`bev import attack` over the fleet's bus into its graph; APT28 is then reachable over HTTP
    with its techniques, and a second run adds nothing."""
    def run() -> dict[str, Any]:
        result = subprocess.run([str(BEV), "import", "attack", "--json", "--data-dir", str(fleet.data_dir)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return dict(json.loads(result.stdout))

    first = run()
    assert first["intrusion-set"] > 100 and first["attack-pattern"] > 500 and first["new_relations"] > 10_000
    with httpx.Client(base_url=fleet.gateway, headers=fleet.auth, timeout=60) as http:
        found = http.post("/api/v1/graph/query", json={
            "cypher": "MATCH (g:Entity) WHERE g.value = $name RETURN g.id", "params": {"name": "APT28"}, "limit": 5})
        assert found.status_code == 200, found.text
        [[apt28]] = found.json()["rows"]
        around = http.get("/api/v1/graph/neighborhood", params={"entity_id": apt28, "depth": 1, "limit": 500})
        assert around.status_code == 200, around.text
        assert sum(e["type"] == "attack-pattern" for e in around.json()["entities"]) > 50
    again = run()
    assert again["new_entities"] == 0 and again["new_relations"] == 0


@async_test
async def test_every_service_over_grpc(bus: NatsClient) -> None:
    instances = {i.service: i for i in await discover(bus, 1.0)}
    calls = {
        "reasoning": ("Generate", reasoning_pb2.GenerateRequest(prompt="Say hi.", max_tokens=8)),
        "embeddings": ("Embed", embeddings_pb2.EmbedRequest(texts=["hello"])),
        "collectors": ("Extract", collectors_pb2.ExtractRequest(text="CVE-2021-44228 on 192.0.2.7")),
        "swarm": ("ListRoles", swarm_pb2.ListRolesRequest()),
        "avatar": ("Speak", avatar_pb2.SpeakRequest(text="Hi.")),
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
