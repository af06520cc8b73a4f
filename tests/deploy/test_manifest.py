"""The node manifest (deploy/manifest.yaml): it loads, and each kind of mistake gets a clear error."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bev.manifest import (
    DEFAULT_MANIFEST,
    MANIFEST_ENV,
    REPLICA_PORT_STRIDE,
    TAILNET,
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
)

Raw = dict[str, Any]

# The brief's fleet: seven services, each exactly once in the local one-machine fleet.
SEVEN_SERVICES = {"gateway", "reasoning", "embeddings", "swarm", "collectors", "avatar", "monitoring"}


def raw_manifest() -> Raw:
    data = yaml.safe_load(DEFAULT_MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(DEFAULT_MANIFEST)


def test_committed_manifest_loads(manifest: Manifest) -> None:
    assert set(manifest.nodes) == {"thanos", "starlord", "oracle1"}
    assert manifest.nodes["oracle1"].arch == "arm64"
    assert not manifest.nodes["oracle1"].gpus
    for name, node in manifest.nodes.items():
        assert node.name == name  # filled in from the YAML key
    for engine in manifest.engines.values():
        assert engine.nodes, engine.name
    assert manifest.engines["nats"].nodes == ["thanos", "starlord", "oracle1"]


def test_local_fleet_lists_every_service_once(manifest: Manifest) -> None:
    names = [s.name for s in manifest.services_on(None)]
    assert len(names) == len(set(names)) == 7
    assert set(names) == SEVEN_SERVICES
    assert [e.name for e in manifest.engines_on(None)] == list(manifest.engines)


def test_node_views_keep_manifest_order(manifest: Manifest) -> None:
    everything = [s.name for s in manifest.services_on(None)]
    placed: set[str] = set()
    for node in manifest.nodes:
        on_node = [s.name for s in manifest.services_on(node)]
        assert on_node == [name for name in everything if name in on_node]
        placed.update(on_node)
    assert placed == set(everything)  # every service runs somewhere
    assert {s.name for s in manifest.services_on("starlord")} == {"reasoning", "avatar"}
    assert {e.name for e in manifest.engines_on("oracle1")} >= {
        "nats",
        "prometheus",
        "alertmanager",
        "grafana",
    }


def test_nats_and_vault_come_first_for_the_supervisor(manifest: Manifest) -> None:
    # Every service depends on both, so the local supervisor starts them before the rest.
    assert [e.name for e in manifest.engines_on(None)][:2] == ["nats", "vault"]
    for service in manifest.services.values():
        assert {"nats", "vault"} <= set(service.engines), service.name


def test_each_service_reads_exactly_its_declared_secrets(manifest: Manifest) -> None:
    # Its own NATS user, then the secret of each engine it lists, then its own extras.
    assert manifest.secrets_of("collectors") == ["nats/collectors", "postgres", "redis", "falkordb"]
    assert manifest.secrets_of("embeddings") == ["nats/embeddings", "postgres"]
    assert manifest.secrets_of("swarm") == ["nats/swarm", "postgres"]  # investigations and DBOS's state
    # API keys and the audit log, per-key limits, and the keys' pepper (services/gateway/servicer.py).
    assert manifest.secrets_of("gateway") == ["nats/gateway", "postgres", "redis", "gateway"]
    for service in ("monitoring", "avatar", "reasoning"):
        assert manifest.secrets_of(service) == [f"nats/{service}"], service  # no grant that no code reads


def test_a_new_call_is_one_edit_in_the_manifest() -> None:
    data = copy.deepcopy(raw_manifest())
    data["services"]["swarm"]["calls"].append("avatar")
    edited = parse_manifest(data)
    assert "avatar" in edited.callees("swarm")
    assert "bev.avatar.v1.>" in edited.nats_permissions("swarm")["publish"]["allow"]


def test_ports_are_distinct_across_the_fleet(manifest: Manifest) -> None:
    ports = [e.port for e in manifest.engines.values()]
    for service in manifest.services.values():
        ports.extend(service.ports().values())
    assert len(ports) == len(set(ports))


def test_addresses_are_on_the_tailnet(manifest: Manifest) -> None:
    import ipaddress

    for node in manifest.nodes.values():
        assert ipaddress.ip_address(node.address) in TAILNET


def test_unknown_node_in_a_view_is_an_error(manifest: Manifest) -> None:
    with pytest.raises(ManifestError, match="unknown node 'mars'"):
        manifest.services_on("mars")
    with pytest.raises(ManifestError, match="unknown node 'mars'"):
        manifest.engines_on("mars")


def test_replica_ports_shift_by_the_stride(manifest: Manifest) -> None:
    gateway = manifest.services["gateway"].model_copy(update={"replicas": 2})
    assert gateway.replica_ports(0) == gateway.ports()
    assert gateway.replica_ports(1) == {
        role: port + REPLICA_PORT_STRIDE for role, port in gateway.ports().items()
    }
    with pytest.raises(ValueError, match="2 replica"):
        gateway.replica_ports(2)


def _set(path: str, value: Any) -> Callable[[Raw], None]:
    """A mutation of the raw manifest: set the value at a dotted path."""

    def mutate(data: Raw) -> None:
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


def _append(path: str, value: Any) -> Callable[[Raw], None]:
    def mutate(data: Raw) -> None:
        target: Any = data
        for key in path.split("."):
            target = target[key]
        target.append(value)

    return mutate


def _all(*mutations: Callable[[Raw], None]) -> Callable[[Raw], None]:
    def mutate(data: Raw) -> None:
        for mutation in mutations:
            mutation(data)

    return mutate


INVALID_CASES: list[tuple[str, Callable[[Raw], None], str]] = [
    (
        "service on unknown node",
        _set("services.avatar.nodes", ["mars"]),
        "service 'avatar' references unknown node 'mars' (known: thanos, starlord, oracle1)",
    ),
    (
        "engine on unknown node",
        _set("engines.redis.nodes", ["thanos", "venus"]),
        "engine 'redis' references unknown node 'venus'",
    ),
    (
        "duplicate service ports",
        _set("services.gateway.metrics_port", 9101),
        "duplicate port 9101: used by service 'reasoning' (metrics port) and by service 'gateway' (metrics port)",
    ),
    (
        "service port taken by an engine",
        _set("services.gateway.http_port", 8000),
        "duplicate port 8000: used by engine 'vllm' and by service 'gateway' (http port)",
    ),
    (
        "replica port collides",
        _all(
            _set("services.reasoning.replicas", 2),
            _set("services.gateway.grpc_port", 50051 + REPLICA_PORT_STRIDE),
        ),
        f"duplicate port {50051 + REPLICA_PORT_STRIDE}: used by service 'reasoning' (grpc port, replica 2)",
    ),
    (
        "gpu service on a node without GPUs",
        _set("services.embeddings.nodes", ["thanos", "oracle1"]),
        "service 'embeddings' needs a GPU but is placed on node 'oracle1', which has none",
    ),
    (
        "gpu engine on a node without GPUs",
        _append("engines.vllm.nodes", "oracle1"),
        "engine 'vllm' needs a GPU but is placed on node 'oracle1', which has none",
    ),
    (
        "unknown engine",
        _append("services.swarm.engines", "mongo"),
        "service 'swarm' references unknown engine 'mongo'",
    ),
    (
        "unknown inference engine",
        _set("services.reasoning.inference", ["tgi"]),
        "service 'reasoning' references unknown inference engine 'tgi'",
    ),
    (
        "model for a node the engine is not on",
        _set("engines.vllm.nodes", ["thanos"]),
        "engine 'vllm' has a model for node 'starlord', where it does not run",
    ),
    (
        "call to an unknown service",
        _append("services.swarm.calls", "oracle"),
        "service 'swarm' calls unknown service 'oracle' (known: reasoning, embeddings",
    ),
    (
        "a service calling itself",
        _append("services.swarm.calls", "swarm"),
        "service 'swarm' lists itself in calls",
    ),
    (
        "calls neither a list nor all",
        _set("services.swarm.calls", "everyone"),
        "services.swarm.calls",
    ),
    (
        "misspelt key",
        _set("services.gateway.http_prot", 8081),
        "services.gateway.http_prot: Extra inputs are not permitted",
    ),
    (
        "name differs from key",
        _set("nodes.thanos.name", "titan"),
        "nodes.thanos: name 'titan' differs from its key 'thanos'",
    ),
    (
        "address outside the tailnet",
        _set("nodes.oracle1.address", "192.168.1.20"),
        "node 'oracle1' has address 192.168.1.20, outside the Tailscale range 100.64.0.0/10",
    ),
    (
        "port out of range",
        _set("services.avatar.grpc_port", 70000),
        "services.avatar.grpc_port: Input should be less than or equal to 65535",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_manifest_gives_one_clear_error(mutate: Callable[[Raw], None], expected: str) -> None:
    data = copy.deepcopy(raw_manifest())
    mutate(data)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, "deploy/manifest.yaml")
    message = str(caught.value)
    assert message.startswith("deploy/manifest.yaml is invalid:")
    assert expected in message
    # The operator reads the error, not pydantic's dump of the whole input.
    assert "input_value" not in message


def test_every_problem_is_listed_in_the_one_error() -> None:
    data = copy.deepcopy(raw_manifest())
    data["services"]["avatar"]["nodes"] = ["mars"]
    data["services"]["swarm"]["engines"].append("mongo")
    data["services"]["gateway"]["metrics_port"] = 9101
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 3
    assert all(line.startswith("  - ") for line in lines)


def test_load_manifest_honours_env_and_reports_bad_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_path = tmp_path / "manifest.yaml"
    copy_path.write_text(DEFAULT_MANIFEST.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv(MANIFEST_ENV, str(copy_path))
    assert load_manifest() == load_manifest(DEFAULT_MANIFEST)

    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ManifestError, match=r"cannot read node manifest .*missing\.yaml"):
        load_manifest()

    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes: [unclosed\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"broken\.yaml is not valid YAML"):
        load_manifest(broken)

    listing = tmp_path / "list.yaml"
    listing.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="expected a mapping"):
        load_manifest(listing)


def test_default_path_is_the_repository_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    assert DEFAULT_MANIFEST == Path(__file__).resolve().parents[2] / "deploy" / "manifest.yaml"
    assert load_manifest() == load_manifest(DEFAULT_MANIFEST)
