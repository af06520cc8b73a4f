"""One node's share of a multi-node fleet, planned from the manifest and a cluster file (no processes
started; tests/lab/test_three_nodes.py runs the three nodes for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bev.cluster import ClusterError, ClusterSpec, NodeTls
from bev.engines.vault_seed import node_policy
from bev.manifest import load_manifest
from bev.settings import BevSettings
from bev.supervisor import FleetPlan, FleetStartError, Supervisor

ADDRESSES = {"thanos": "10.9.0.1", "starlord": "10.9.0.2", "oracle1": "10.9.0.3"}


def spec_for(tmp_path: Path, node: str, *, services: tuple[str, ...] | None = None) -> ClusterSpec:
    for name in ("ca.pem", "node.pem", "node.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    names = services if services is not None else load_manifest().service_names()
    return ClusterSpec(node=node, addresses=ADDRESSES, vault_addr="http://10.9.0.1:8200",
                       nats_operator_password="op", nats_route_password="route",
                       nats_service_passwords={name: f"pw-{name}" for name in names},
                       tls=NodeTls(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "node.pem",
                                   key_file=tmp_path / "node.key"))


def test_a_node_plans_only_what_the_manifest_places_there_on_its_own_address(tmp_path: Path) -> None:
    manifest = load_manifest()
    plan = FleetPlan.from_manifest(manifest, tmp_path, "starlord", cluster=spec_for(tmp_path, "starlord"))
    assert plan.host == "10.9.0.2"
    assert list(plan.engine_ports) == ["nats"]  # no Vault here: its services' ids come from THANOS's
    assert {s.name for s in plan.services} == {s.name for s in manifest.services_on("starlord")}
    assert plan.service_ports["reasoning"]["grpc"] == manifest.services["reasoning"].grpc_port


def test_monitoring_node_scrapes_every_node_at_its_address(tmp_path: Path) -> None:
    manifest = load_manifest()
    plan = FleetPlan.from_manifest(manifest, tmp_path, "oracle1", cluster=spec_for(tmp_path, "oracle1"))
    targets = {(g["labels"]["process"], g["labels"]["node"]): g["targets"][0]
               for g in Supervisor(plan, BevSettings()).scrape_targets() if "process" in g["labels"]}
    assert targets[("reasoning", "starlord")] == f"10.9.0.2:{manifest.services['reasoning'].metrics_port}"
    assert targets[("gateway", "thanos")] == f"10.9.0.1:{manifest.services['gateway'].metrics_port}"
    expected = {(s.name, node) for node in manifest.nodes for s in manifest.services_on(node)}
    assert expected <= set(targets)


def test_a_wrong_or_incomplete_cluster_file_is_one_clear_error(tmp_path: Path) -> None:
    manifest = load_manifest()
    with pytest.raises(FleetStartError, match=r"node .thanos.*--node thanos"):
        FleetPlan.from_manifest(manifest, tmp_path, "starlord", cluster=spec_for(tmp_path, "thanos"))
    with pytest.raises(FleetStartError, match=r"no NATS password for .*gateway"):
        FleetPlan.from_manifest(manifest, tmp_path, "thanos",
                                cluster=spec_for(tmp_path, "thanos", services=("reasoning", "avatar")))
    with pytest.raises(ClusterError, match="no cluster file"):
        ClusterSpec.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ClusterError, match="not valid"):
        ClusterSpec.load(tmp_path / "bad.json")
    spec = spec_for(tmp_path, "thanos")
    spec.save(tmp_path / "thanos.json")
    assert ClusterSpec.load(tmp_path / "thanos.json") == spec
    assert (tmp_path / "thanos.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "node.key").unlink()
    with pytest.raises(ClusterError, match="TLS file"):
        ClusterSpec.load(tmp_path / "thanos.json")


def test_replicas_per_node_are_processes_of_their_own(tmp_path: Path) -> None:
    manifest = load_manifest()
    manifest.services["embeddings"].replicas = 2
    plan = FleetPlan.from_manifest(manifest, tmp_path, None, only=["embeddings"])
    assert plan.service_ports["embeddings-2"]["grpc"] == plan.service_ports["embeddings-1"]["grpc"] + 100


def test_a_node_token_covers_only_its_services_approles() -> None:
    policy = node_policy(["avatar", "reasoning"])
    assert 'path "auth/approle/role/bev-avatar/secret-id"' in policy
    assert 'path "auth/approle/role/bev-reasoning/role-id"' in policy
    assert "gateway" not in policy and "secret/" not in policy
