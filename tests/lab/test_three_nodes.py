"""The fleet as three nodes (THANOS, STARLORD, ORACLE1), each a Linux network namespace running
`bev up --node <name>` from the one manifest (bev.lab): a 3-node NATS cluster with JetStream R3 and
TLS on clients and routes, Vault, the stores and the gateway on THANOS, reasoning on THANOS and
STARLORD, monitoring on ORACLE1. Every node sees its own copy of the demo world (the "internet") on
its loopback.

In order, on one lab: each node runs exactly its share; zero trust between nodes (no certificate,
foreign credentials, node tokens); an investigation started through THANOS's gateway completes while
STARLORD is cut off and then killed, reasoning failing over to THANOS's replica; monitoring raises
one node-down incident; STARLORD comes back and its services reappear in `bev status`.
Needs root (ip netns); CI runs it (`slow`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import nats.errors
import pytest

from bev.bus import inbox_prefix
from bev.cluster import ClusterSpec
from bev.engines.vault_seed import new_secret_id, node_token
from bev.lab import Lab
from bev.manifest import Manifest, load_manifest
from bev.rpc.errors import RpcError
from bev.secrets import SecretsUnavailable
from services.swarm.demo.investigate import recall_of
from services.swarm.demo.lab import serve_world_copies
from services.swarm.demo.server import DemoWorld
from tests.test_fleet import BEV, bearer
from tests.test_investigations import check_citations, request_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces (ip netns) need root"),
]
FINISHED = {"completed", "failed", "cancelled", "budget_exhausted"}
CUT = "starlord"  # the node taken away: the powerful-tier reasoning replica and the avatar


@dataclass
class LabFleet:
    lab: Lab
    world: DemoWorld
    manifest: Manifest
    figures: dict[str, float] = field(default_factory=dict)
    cut_at: float = 0.0  # when STARLORD's link went down (time.time(): incidents carry wall times)

    @property
    def gateway(self) -> str:
        return str(self.lab.fleet("thanos")["gateway"])

    @property
    def auth(self) -> dict[str, str]:
        return bearer(str(self.lab.fleet("thanos")["api_key"]))

    def cluster(self, node: str) -> ClusterSpec:
        return ClusterSpec.load(self.lab.cluster_file(node))

    def status(self) -> list[dict[str, Any]]:
        """`bev status --json` as the operator runs it on THANOS (over its NATS server, with TLS)."""
        result = subprocess.run([str(BEV), "status", "--json", "--data-dir", str(self.lab.data_dir("thanos"))],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        instances: list[dict[str, Any]] = json.loads(result.stdout)["instances"]
        return instances


def tls_context(spec: ClusterSpec | None, *, certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(spec.tls.ca_file)) if spec else ssl.create_default_context()
    if spec is not None and certificate:
        context.load_cert_chain(str(spec.tls.cert_file), str(spec.tls.key_file))
    return context


def nats_url(lab: Lab, node: str) -> str:
    return f"tls://{lab.address(node)}:{lab.manifest.engines['nats'].port}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFleet]:
    manifest = load_manifest()
    root = tmp_path_factory.mktemp("lab")
    with DemoWorld() as world:
        # Its own names and range: never the namespaces of a `make lab` running beside the tests.
        lab = Lab(manifest, root, env=world.collectors_env(), prefix="bevtest", subnet="10.216.0.0/24")
        try:
            lab.prepare()
            serve_world_copies(lab, world)
            began = time.monotonic()
            lab.start()
            fleet = LabFleet(lab, world, manifest, {"lab_up_s": round(time.monotonic() - began, 1)})
            yield fleet
            print(f"lab figures: {json.dumps(fleet.figures)}")
            (root / "figures.json").write_text(json.dumps(fleet.figures))  # kept with pytest's basetemp
        finally:
            lab.down()


def wait_until(what: str, condition: Any, timeout_s: float, every_s: float = 0.5) -> float:
    """Poll until condition() is truthy; the seconds it took."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(every_s)
    return time.monotonic() - began


def test_each_node_runs_exactly_its_share_of_the_manifest(lab: LabFleet) -> None:
    serving = {(i["service"], i["node"]) for i in lab.status() if i["state"] == "serving"}
    expected = {(s.name, node) for node in lab.lab.nodes for s in lab.manifest.services_on(node)}
    assert serving == expected
    # Engines only where placed: nothing answers PostgreSQL's port on STARLORD or ORACLE1.
    for node in ("starlord", "oracle1"):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((lab.lab.address(node), lab.manifest.engines["postgres"].port), 2).close()
    # NATS: one cluster (each server routes to both others); the event stream is R3, all replicas current.
    for node in lab.lab.nodes:
        routes = httpx.get(f"http://{lab.lab.address(node)}:8222/routez", timeout=5).json()
        assert {r["remote_name"] for r in routes["routes"]} == set(lab.lab.nodes) - {node}, routes

    async def stream_cluster() -> Any:
        spec = lab.cluster("thanos")
        nc = await nats.connect(nats_url(lab.lab, "thanos"), user="bev", password=spec.nats_operator_password,
                                tls=tls_context(spec), connect_timeout=5, max_reconnect_attempts=0)
        try:
            return (await nc.jetstream().stream_info("BEV_EVENTS")).cluster
        finally:
            await nc.close()

    cluster = asyncio.run(stream_cluster())
    assert cluster is not None and cluster.leader in lab.lab.nodes
    assert {r.name for r in cluster.replicas or []} | {cluster.leader} == set(lab.lab.nodes)
    assert all(r.current for r in cluster.replicas or [])


def test_zero_trust_between_nodes(lab: LabFleet) -> None:
    thanos, starlord = lab.cluster("thanos"), lab.cluster("starlord")

    async def connect(spec: ClusterSpec | None, user: str, password: str, *, certificate: bool = True,
                      errors: list[str] | None = None) -> nats.NATS:
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        # Replies come under the connection's own inbox prefix, the only inbox its user may read.
        return await nats.connect(nats_url(lab.lab, "thanos"), user=user, password=password,
                                  tls=tls_context(spec, certificate=certificate), connect_timeout=5,
                                  max_reconnect_attempts=0, allow_reconnect=False, error_cb=on_error,
                                  inbox_prefix=inbox_prefix(user))

    async def check() -> None:
        # A client without a certificate (trusting the CA) is refused; so is one trusting another CA.
        for spec, certificate in ((thanos, False), (None, False)):
            with pytest.raises((nats.errors.Error, ssl.SSLError, OSError)):
                nc = await connect(spec, "bev", thanos.nats_operator_password, certificate=certificate)
                await nc.close()
        # STARLORD's avatar, with its own credentials, reaches the swarm it calls...
        avatar_password = starlord.nats_service_passwords["avatar"]
        errors: list[str] = []
        nc = await connect(starlord, "bev-avatar", avatar_password, errors=errors)
        try:
            from bev.common.v1 import common_pb2
            from bev.swarm.v1.swarm_rpc import SwarmClient

            health = await SwarmClient.over_nats(nc).Health(common_pb2.HealthRequest(), timeout_s=10)
            assert health.status == common_pb2.HealthResponse.STATUS_SERVING
            # ...but cannot publish to another service's subjects nor listen to them.
            await nc.publish("bev.collectors.v1.Collect", b"")
            await nc.subscribe("bev.gateway.>")
            await nc.flush(5)
            await asyncio.sleep(0.5)
        finally:
            await nc.close()
        assert any("permissions violation for publish" in e.lower() and "bev.collectors.v1.collect" in e.lower()
                   for e in errors), errors
        assert any("permissions violation for subscription" in e.lower() for e in errors), errors
        # A password from another service does not authenticate as this one.
        with pytest.raises((nats.errors.Error, OSError)):
            nc = await connect(starlord, "bev-gateway", avatar_password)
            await nc.close()

    asyncio.run(check())
    # Node tokens: STARLORD's mints secret ids for its own services only.
    vault, root_token = lab.lab.vault_addr, json.loads(
        (lab.lab.data_dir("thanos") / "openbao" / "init.json").read_text())["root_token"]
    token = node_token(vault, root_token, "starlord-check", [s.name for s in lab.manifest.services_on("starlord")])
    assert new_secret_id(vault, token, "avatar")
    with pytest.raises(SecretsUnavailable, match="gateway"):
        new_secret_id(vault, token, "gateway")
    # A revoked token loses access at once.
    httpx.post(f"{vault}/v1/auth/token/revoke", headers={"X-Vault-Token": root_token}, json={"token": token},
               timeout=10).raise_for_status()
    with pytest.raises(SecretsUnavailable):
        new_secret_id(vault, token, "avatar")


async def reasoning_routes_around(lab: LabFleet, since: float) -> float:
    """Seconds from `since` until reasoning's queue group answers 20 Health calls in a row from
    THANOS (a call that reached STARLORD's replica before the cluster noticed times out)."""
    from bev.common.v1 import common_pb2
    from bev.reasoning.v1.reasoning_rpc import ReasoningClient

    spec = lab.cluster("thanos")
    nc = await nats.connect(nats_url(lab.lab, "thanos"), user="bev", password=spec.nats_operator_password,
                            tls=tls_context(spec), connect_timeout=5)
    try:
        client, streak = ReasoningClient.over_nats(nc), 0
        while streak < 20:
            assert time.monotonic() - since < 120, "reasoning did not route around the lost node within 120 s"
            try:
                await client.Health(common_pb2.HealthRequest(), timeout_s=1.0)
                streak += 1
            except RpcError:  # deadline or unavailable (it reached the lost replica): start again
                streak = 0
        return time.monotonic() - since
    finally:
        await nc.close()


def test_investigation_completes_while_starlord_is_cut_off_then_killed(lab: LabFleet) -> None:
    body = request_for(lab.world, "hierarchical")
    answer = httpx.post(f"{lab.gateway}/api/v1/investigations", headers=lab.auth, json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    investigation_id = answer.json()["id"]

    def progressed() -> bool:
        got = httpx.get(f"{lab.gateway}/api/v1/investigations/{investigation_id}", headers=lab.auth, timeout=10)
        return got.status_code == 200 and got.json()["usage"]["tool_calls"] > 0

    wait_until("the investigation's first tool calls", progressed, 300)
    cut, lab.cut_at = time.monotonic(), time.time()
    lab.lab.network.cut(CUT)

    def starlord_gone() -> bool:
        return all(i["node"] != CUT for i in lab.status())

    lab.figures["reasoning_routes_around_s"] = round(asyncio.run(reasoning_routes_around(lab, cut)), 1)
    wait_until("STARLORD's instances gone from bev status", starlord_gone, 120, every_s=1.0)
    lab.figures["lost_node_out_of_status_s"] = round(time.monotonic() - cut, 1)
    time.sleep(5)
    lab.figures["starlord_processes_killed"] = lab.lab.kill_node(CUT)
    deadline = time.monotonic() + 1200
    while True:
        got = httpx.get(f"{lab.gateway}/api/v1/investigations/{investigation_id}", headers=lab.auth, timeout=10)
        assert got.status_code == 200, got.text
        investigation = got.json()
        if investigation["status"] in FINISHED:
            break
        assert time.monotonic() < deadline, "the investigation did not finish"
        time.sleep(1)
    assert investigation["status"] == "completed", investigation.get("error")
    report = investigation["report"]
    recall = recall_of(report, lab.world)
    lab.figures["investigation_s"] = round(time.monotonic() - cut, 1)
    print(f"investigation on three nodes with {CUT} lost: recall {recall.entities:.2f}/{recall.relations:.2f}, "
          f"{investigation['usage']}")
    assert recall.entities >= 0.9, sorted(recall.missing_entities)
    assert recall.relations >= 0.8, sorted(recall.missing_relations)
    assert check_citations(lab, report) > 50  # type: ignore[arg-type]  # LabFleet has gateway and auth
    reasoning_nodes = {i["node"] for i in lab.status() if i["service"] == "reasoning" and i["state"] == "serving"}
    assert reasoning_nodes == {"thanos"}


def test_monitoring_raises_one_node_down_incident(lab: LabFleet) -> None:
    def node_down() -> list[dict[str, Any]]:
        got = httpx.get(f"{lab.gateway}/api/v1/alerts", headers=lab.auth, params={"status": "open"}, timeout=10)
        assert got.status_code == 200, got.text
        return [i for i in got.json()["incidents"] if CUT in json.dumps(i) and "NodeDown" in json.dumps(i)]

    wait_until("a NodeDown incident for STARLORD", node_down, 120, every_s=2.0)
    incidents = node_down()
    assert len(incidents) == 1, incidents
    node_down_since = min(float(a["started_at"]) for a in incidents[0]["alerts"] if a["name"] == "NodeDown")
    lab.figures["node_down_alert_after_cut_s"] = round(node_down_since - lab.cut_at, 1)
    lab.figures["node_down_incident_opened_after_cut_s"] = round(float(incidents[0]["opened_at"]) - lab.cut_at, 1)
    print(f"node-down incident: {json.dumps(incidents[0])[:1500]}")


def test_starlord_rejoins_and_its_services_reappear(lab: LabFleet) -> None:
    lab.lab.network.restore(CUT)
    began = time.monotonic()
    lab.lab.start_node(CUT)
    lab.lab.wait_up(CUT)
    lab.figures["rejoin_s"] = round(time.monotonic() - began, 1)
    expected = {(s.name, CUT) for s in lab.manifest.services_on(CUT)}

    def reappeared() -> bool:
        # The node's supervisor saw them serving; THANOS's view follows once their Health answers
        # within `bev status`'s one-second window on two loaded cores.
        return expected <= {(i["service"], i["node"]) for i in lab.status() if i["state"] == "serving"}

    wait_until("STARLORD's services in bev status on THANOS", reappeared, 90, every_s=2.0)
    routes = httpx.get(f"http://{lab.lab.address(CUT)}:8222/routez", timeout=5).json()
    assert {r["remote_name"] for r in routes["routes"]} == set(lab.lab.nodes) - {CUT}
