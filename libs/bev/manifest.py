"""The node manifest: which engine and service runs on which node of the fleet.

deploy/manifest.yaml is the one source for both the local one-machine fleet (`services_on(None)`)
and the generated per-node docker-compose files (bev.compose), so the two cannot drift.
Loading validates the whole file and reports every problem in one ManifestError.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bev.bus import nats_permissions

# libs/bev/manifest.py -> repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT / "deploy" / "manifest.yaml"
MANIFEST_ENV = "BEV_MANIFEST"

# Tailscale hands out node addresses from the CGNAT range.
TAILNET = ipaddress.ip_network("100.64.0.0/10")

# Replica k (0-based) of a service publishes each of its ports at port + k * stride, so replicas
# on one node never fight over a host port. The loader checks the shifted ports are free too.
REPLICA_PORT_STRIDE = 100


class ManifestError(ValueError):
    """The manifest cannot be used; str() says what to fix, one problem per line."""


class _Spec(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class NodeSpec(_Spec):
    name: str
    address: str
    arch: Literal["amd64", "arm64"]
    gpus: list[str] = []
    role: str


class ModelSpec(_Spec):
    """What an inference engine (vLLM) serves on one node."""

    tier: str
    # Path inside the engine's /models volume: weights are provisioned, never downloaded at start.
    model: str
    gpu_memory_utilization: float = Field(gt=0, le=1)
    max_model_len: int = Field(gt=0)


class EngineSpec(_Spec):
    name: str
    nodes: list[str]
    port: int = Field(ge=1, le=65535)  # the port clients use (published on the node's address)
    image: str  # image used in compose
    gpu: bool = False
    models: dict[str, ModelSpec] = {}  # node -> model served there (inference engines only)
    # The Vault secret (under bev/) holding this engine's address and credentials; a service that
    # lists the engine reads it. Empty: services reach it without one (NATS users and Vault
    # logins are per service; inference engines are open on the mesh).
    secret: str = ""


class HealthSpec(_Spec):
    """How a deployment tells that a service instance is up (the compose healthcheck)."""

    # Grace before failed probes count: model loads (MiniLM, llama.cpp) take longer than the rest.
    start_period_s: int = Field(default=30, ge=0)
    interval_s: int = Field(default=15, ge=1)


class WorkerSpec(_Spec):
    """A non-RPC process of a service (a Celery worker or beat): `python -m services.<service>.<name>`."""

    name: str
    nodes: list[str] = []  # empty = every node the service runs on
    # Where its /metrics listens (Prometheus scrapes workers as well as services); None = no metrics.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    def module(self, service: str) -> str:
        return f"services.{service}.{self.name}"


ALL_SERVICES = "all"


class ServiceSpec(_Spec):
    """One service, declared once: where it runs, its ports, what it calls and which secrets it reads.

    NATS permissions (bev.bus), Vault policies and AppRoles (bev.supervisor, `bev deploy`), the
    fleet list (bev.fleet), the gateway's clients and the compose files are all derived from it.
    """

    name: str
    nodes: list[str]
    # Services it calls over the bus; its NATS user may publish requests to nothing else.
    # `all`: every service in the manifest (monitoring asks each instance for its Health).
    calls: list[str] | Literal["all"] = []
    # Vault secrets it reads besides its own NATS user and the secrets of its engines.
    secrets: list[str] = []
    # Event subjects it publishes besides its own `bev.events.<name>.>`: `investigation` ->
    # `bev.events.investigation.>` (the swarm's investigation events).
    events: list[str] = []
    # Event subjects it subscribes to (live, core NATS): `investigation` -> `bev.events.investigation.>`.
    listens: list[str] = []
    health: HealthSpec = HealthSpec()
    replicas: int = Field(default=1, ge=1)  # per node
    grpc_port: int = Field(ge=1, le=65535)
    metrics_port: int = Field(ge=1, le=65535)
    http_port: int | None = Field(default=None, ge=1, le=65535)
    extras: list[str] = []
    engines: list[str]
    gpu: bool = False
    env: dict[str, str] = {}
    # Inference engines the service routes over in the deployed fleet; the local fleet replaces
    # them with llama.cpp in-process, so they are not part of `engines`.
    inference: list[str] = []
    # Processes that run beside the service and share its AppRole, but serve no RPC (so `bev
    # status` does not list them); the supervisor restarts them like services.
    workers: list[WorkerSpec] = []

    def nats_secret(self) -> str:
        """Its own NATS user's credentials (every service connects as itself)."""
        return f"nats/{self.name}"

    def workers_on(self, node: str | None) -> list[WorkerSpec]:
        """Workers placed on `node`; None = each worker once (the local fleet)."""
        return [w for w in self.workers if node is None or node in (w.nodes or self.nodes)]

    def ports(self) -> dict[str, int]:
        """The service's ports by role (grpc, metrics, http)."""
        ports = {"grpc": self.grpc_port, "metrics": self.metrics_port}
        if self.http_port is not None:
            ports["http"] = self.http_port
        return ports

    def replica_names(self) -> list[str]:
        """Its processes on one node: the service's name, or `<service>-<n>` (1-based) for each of
        several replicas (the compose files' container names, the local supervisor's processes)."""
        if self.replicas == 1:
            return [self.name]
        return [f"{self.name}-{replica + 1}" for replica in range(self.replicas)]

    def replica_ports(self, replica: int) -> dict[str, int]:
        """Host ports published by replica `replica` (0-based) on each of the service's nodes."""
        if not 0 <= replica < self.replicas:
            raise ValueError(f"service '{self.name}' has {self.replicas} replica(s), not {replica + 1}")
        return {role: port + replica * REPLICA_PORT_STRIDE for role, port in self.ports().items()}


class Manifest(_Spec):
    nodes: dict[str, NodeSpec]
    engines: dict[str, EngineSpec]
    services: dict[str, ServiceSpec]

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        # In YAML the mapping key is the name; fill `name` in so each spec stands on its own.
        if not isinstance(data, Mapping):
            return data
        filled = dict(data)
        for section in ("nodes", "engines", "services"):
            entries = filled.get(section)
            if not isinstance(entries, Mapping):
                continue
            named: dict[Any, Any] = {}
            for key, spec in entries.items():
                if isinstance(spec, Mapping):
                    if "name" in spec and spec["name"] != key:
                        raise ValueError(
                            f"{section}.{key}: name '{spec['name']}' differs from its key '{key}'"
                        )
                    spec = {"name": key, **spec}
                named[key] = spec
            filled[section] = named
        return filled

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        problems = [*self._node_problems(), *self._placement_problems(), *self._port_problems()]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _node_problems(self) -> list[str]:
        problems: list[str] = []
        seen: dict[str, str] = {}
        for node in self.nodes.values():
            try:
                address = ipaddress.ip_address(node.address)
            except ValueError:
                problems.append(
                    f"node '{node.name}' has address '{node.address}', which is not an IP address"
                )
                continue
            if address not in TAILNET:
                problems.append(
                    f"node '{node.name}' has address {node.address}, outside the Tailscale range {TAILNET}"
                )
            if node.address in seen:
                problems.append(
                    f"nodes '{seen[node.address]}' and '{node.name}' share address {node.address}"
                )
            seen[node.address] = node.name
        return problems

    def _placement_problems(self) -> list[str]:
        problems: list[str] = []
        known_nodes = ", ".join(self.nodes)
        known_engines = ", ".join(self.engines)

        def check_nodes(kind: str, name: str, nodes: list[str], gpu: bool) -> None:
            if not nodes:
                problems.append(f"{kind} '{name}' runs on no node")
            for node in nodes:
                if node not in self.nodes:
                    problems.append(
                        f"{kind} '{name}' references unknown node '{node}' (known: {known_nodes})"
                    )
                elif gpu and not self.nodes[node].gpus:
                    problems.append(
                        f"{kind} '{name}' needs a GPU but is placed on node '{node}', which has none"
                    )
            if len(set(nodes)) != len(nodes):
                problems.append(f"{kind} '{name}' lists a node twice: {', '.join(nodes)}")

        for engine in self.engines.values():
            check_nodes("engine", engine.name, engine.nodes, engine.gpu)
            for node in engine.models:
                if node not in engine.nodes:
                    problems.append(
                        f"engine '{engine.name}' has a model for node '{node}', where it does not run"
                    )
            if engine.models:
                for node in engine.nodes:
                    if node not in engine.models:
                        problems.append(
                            f"engine '{engine.name}' runs on node '{node}' but names no model for it"
                        )
        for service in self.services.values():
            check_nodes("service", service.name, service.nodes, service.gpu)
            for engine_name in service.engines:
                if engine_name not in self.engines:
                    problems.append(
                        f"service '{service.name}' references unknown engine '{engine_name}' (known: {known_engines})"
                    )
            if service.calls != ALL_SERVICES:
                for callee in service.calls:
                    if callee not in self.services:
                        problems.append(f"service '{service.name}' calls unknown service '{callee}' "
                                        f"(known: {', '.join(self.services)})")
                    elif callee == service.name:
                        problems.append(f"service '{service.name}' lists itself in calls")
            for worker in service.workers:
                for node in worker.nodes:
                    if node not in service.nodes:
                        problems.append(f"worker '{service.name}.{worker.name}' is placed on node '{node}', "
                                        f"where service '{service.name}' does not run")
            for engine_name in service.inference:
                if engine_name not in self.engines:
                    problems.append(
                        f"service '{service.name}' references unknown inference engine '{engine_name}' "
                        f"(known: {known_engines})"
                    )
                elif not self.engines[engine_name].models:
                    problems.append(
                        f"service '{service.name}' uses '{engine_name}' for inference, but that engine lists no models"
                    )
        return problems

    def _port_problems(self) -> list[str]:
        # One global check, not per node: the local fleet runs every engine and service on one machine.
        problems: list[str] = []
        owners: dict[int, str] = {}

        def claim(port: int, owner: str) -> None:
            if port in owners:
                problems.append(f"duplicate port {port}: used by {owners[port]} and by {owner}")
            else:
                owners[port] = owner

        for engine in self.engines.values():
            claim(engine.port, f"engine '{engine.name}'")
        for service in self.services.values():
            for replica in range(service.replicas):
                for role, port in service.replica_ports(replica).items():
                    suffix = f", replica {replica + 1}" if replica else ""
                    claim(port, f"service '{service.name}' ({role} port{suffix})")
            for worker in service.workers:
                if worker.metrics_port is not None:
                    claim(worker.metrics_port, f"worker '{service.name}-{worker.name}' (metrics port)")
        for port, owner in owners.items():
            if port > 65535:
                problems.append(f"port {port} of {owner} is above 65535")
        return problems

    def _require_node(self, node: str | None) -> None:
        if node is not None and node not in self.nodes:
            raise ManifestError(f"unknown node '{node}' (known: {', '.join(self.nodes)})")

    def services_on(self, node: str | None) -> list[ServiceSpec]:
        """Services placed on `node`, in manifest order; None = every service once (the local fleet)."""
        self._require_node(node)
        return [s for s in self.services.values() if node is None or node in s.nodes]

    def engines_on(self, node: str | None) -> list[EngineSpec]:
        """Engines placed on `node`, in manifest order; None = every engine once (the local fleet)."""
        self._require_node(node)
        return [e for e in self.engines.values() if node is None or node in e.nodes]

    def service_names(self) -> tuple[str, ...]:
        """Every service of the fleet, in manifest order."""
        return tuple(self.services)

    def callees(self, service: str) -> tuple[str, ...]:
        """The services `service` calls over the bus, in manifest order."""
        calls = self.services[service].calls
        if calls == ALL_SERVICES:
            return self.service_names()
        return tuple(name for name in self.services if name in calls)

    def nats_permissions(self, service: str) -> dict[str, dict[str, list[str]]]:
        """Its NATS user's permissions: its own subjects and those of the services it calls."""
        return nats_permissions(service, self.callees(service),
                                discovery=self.services[service].calls == ALL_SERVICES,
                                events=self.services[service].events, listens=self.services[service].listens)

    def secrets_of(self, service: str) -> list[str]:
        """Every Vault secret `service` may read: its NATS user, its engines' secrets, its own extras."""
        spec = self.services[service]
        engine_secrets = [self.engines[e].secret for e in spec.engines if e in self.engines and self.engines[e].secret]
        return list(dict.fromkeys([spec.nats_secret(), *engine_secrets, *spec.secrets]))


def default_manifest_path() -> Path:
    """$BEV_MANIFEST if set, else deploy/manifest.yaml in this checkout."""
    override = os.environ.get(MANIFEST_ENV)
    return Path(override) if override else DEFAULT_MANIFEST


def _describe(exc: ValidationError) -> str:
    lines: list[str] = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        # Model-level problems carry no location and may span several lines.
        lines.extend(f"{where}: {line}" if where else line for line in message.splitlines())
    return "\n".join(f"  - {line}" for line in lines)


def parse_manifest(data: object, source: str = "<manifest>") -> Manifest:
    """Validate already-parsed YAML; every problem is listed in one ManifestError."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"{source}: expected a mapping with nodes, engines and services")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source} is invalid:\n{_describe(exc)}") from exc


def load_manifest(path: Path | None = None) -> Manifest:
    """Load and validate the node manifest (default: $BEV_MANIFEST, else deploy/manifest.yaml)."""
    path = path if path is not None else default_manifest_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read node manifest {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from exc
    return parse_manifest(data, str(path))
