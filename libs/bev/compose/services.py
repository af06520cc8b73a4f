"""Compose entries of the BEV services placed on a node: one per replica, one per worker."""

from __future__ import annotations

import json
from typing import Any

from bev.compose.engines import engine_url, tailnet_url, vault_addr
from bev.compose.node_file import (
    LOGGING,
    TLS_DIR,
    NodeFile,
    gpu_reservation,
    healthcheck,
    python_probe,
    read_only_bind,
)
from bev.manifest import ServiceSpec

# Inside service containers: the fleet CA that signed Vault's certificate.
CA_CERT_IN_CONTAINER = "/run/bev/tls/ca.crt"
GRPC_TLS_IN_CONTAINER = "/run/bev/tls/grpc"  # <service>.crt/.key from the operator (Vault PKI)


# Dockerfile stages: the slim Python image, and NVIDIA's CUDA runtime image for GPU services.
RUNTIME_TARGET = "runtime"
CUDA_RUNTIME_TARGET = "runtime-cuda"


def image_tag(service: ServiceSpec) -> str:
    """Local image name for a service: one Dockerfile, one image per set of extras and target."""
    return f"bev:{'-'.join(service.extras) or 'core'}{'-cuda' if service.gpu else ''}"


def build_target(service: ServiceSpec) -> str:
    return CUDA_RUNTIME_TARGET if service.gpu else RUNTIME_TARGET


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def container_names(service: ServiceSpec, node: str) -> list[str]:
    """Compose services of `service` on `node`: its replicas (`<service>-<n>` when more than one),
    then its workers (`<service>-<worker>`). Each logs in to Vault with a secret id of its own."""
    return service.replica_names() + [f"{service.name}-{worker.name}" for worker in service.workers_on(node)]


def role_id_variable(service: str) -> str:
    """Variable `docker compose up` reads a service's AppRole role id from (`bev deploy up` sets it)."""
    return f"BEV_ROLE_ID_{_env_name(service)}"


def secret_id_variable(container: str) -> str:
    """Variable `docker compose up` reads a container's single-use secret id from (`bev deploy up`)."""
    return f"BEV_SECRET_ID_{_env_name(container)}"


def _approle_env(service: ServiceSpec, container: str) -> dict[str, str]:
    # Interpolated by compose from `bev deploy up`'s environment, so no secret id is ever on disk.
    # Empty when unset: `docker compose ps/logs/down` by hand still work, and a service started
    # without them exits with one line asking for them.
    return {
        "BEV_VAULT__ROLE_ID": f"${{{role_id_variable(service.name)}:-}}",
        "BEV_VAULT__SECRET_ID": f"${{{secret_id_variable(container)}:-}}",
    }


def service_env(f: NodeFile, service: ServiceSpec) -> dict[str, str]:
    """Environment the service's replicas and workers on this node share."""
    manifest, node = f.manifest, f.node.name
    env = {
        "BEV_ENV": "prod",
        "BEV_NODE": node,
        "BEV_DATA_DIR": "/data",
        "BEV_NATS__URL": engine_url(manifest, node, "nats"),
        "BEV_VAULT__ADDR": vault_addr(manifest, node),
        "BEV_VAULT__CA_CERT": CA_CERT_IN_CONTAINER,
        # Inside the container the service always listens on its manifest ports; replicas differ
        # only in the host port they are published on.
        "BEV_RPC__GRPC_HOST": "0.0.0.0",
        "BEV_RPC__GRPC_PORT": str(service.grpc_port),
        "BEV_TELEMETRY__METRICS_HOST": "0.0.0.0",
        "BEV_TELEMETRY__METRICS_PORT": str(service.metrics_port),
    }
    if service.http_port is not None:
        # Same variable the local supervisor sets (bev.supervisor).
        env[f"BEV_{_env_name(service.name)}__PORT"] = str(service.http_port)
    # Database, Redis and graph addresses come with their credentials from Vault (bev.secrets), so
    # they are not repeated here: in production those secrets name the Tailscale address.
    for engine in service.inference:
        spec = manifest.engines[engine]
        # Every tier, local or not: a request for the powerful tier may land on any replica.
        endpoints = {
            spec.models[host].tier: engine_url(manifest, node, engine)
            if host == node
            else tailnet_url(manifest, engine, host)
            for host in spec.nodes
        }
        # A JSON object: pydantic-settings parses it into a dict[str, str] field.
        env[f"BEV_{_env_name(service.name)}__{_env_name(engine)}_ENDPOINTS"] = json.dumps(
            endpoints, sort_keys=True
        )
    for engine in ("prometheus", "alertmanager"):  # monitoring queries one and sends incidents to the other
        if engine in service.engines:
            env[f"BEV_{_env_name(service.name)}__{_env_name(engine)}_URL"] = engine_url(manifest, node, engine)
    env.update(service.env)
    return env


def render_service(f: NodeFile, service: ServiceSpec) -> None:
    """Add the service's replicas and its workers on this node to `f`."""
    local_engines = [e for e in service.engines if f.node.name in f.manifest.engines[e].nodes]
    names = container_names(service, f.node.name)
    for replica in range(service.replicas):
        name = names[replica]
        ports = [
            f.publish(host_port, service.ports()[role])
            for role, host_port in service.replica_ports(replica).items()
        ]
        spec: dict[str, Any] = {
            "image": image_tag(service),
            "build": {
                "context": "../..",
                "dockerfile": "deploy/Dockerfile",
                "target": build_target(service),
                "args": {"EXTRAS": ",".join(service.extras)},
            },
            "platform": f"linux/{f.node.arch}",
            "command": ["python", "-m", f"services.{service.name}"],
            "init": True,  # forwards SIGTERM so the service shuts down gracefully
            "restart": "unless-stopped",
            "stop_grace_period": "30s",
            # gRPC is reachable from other programs over the mesh: mTLS with the fleet's CA.
            "environment": {
                **service_env(f, service),
                **_approle_env(service, name),
                "BEV_RPC__GRPC_TLS_CERT": f"{GRPC_TLS_IN_CONTAINER}/{service.name}.crt",
                "BEV_RPC__GRPC_TLS_KEY": f"{GRPC_TLS_IN_CONTAINER}/{service.name}.key",
                "BEV_RPC__GRPC_TLS_CA": CA_CERT_IN_CONTAINER,
            },
            "volumes": [
                f.volume(f"{service.name}-data", "/data"),
                read_only_bind(f"./{TLS_DIR}/ca.crt", CA_CERT_IN_CONTAINER),
                read_only_bind(f"./{TLS_DIR}/{service.name}", GRPC_TLS_IN_CONTAINER),
            ],
            "ports": ports,
        }
        if local_engines:
            spec["depends_on"] = {e: {"condition": "service_healthy"} for e in local_engines}
        # Timing from the service's `health` declaration: model loads need a longer grace period.
        spec["healthcheck"] = healthcheck(python_probe(f"http://127.0.0.1:{service.metrics_port}/metrics"),
                                          start_period=f"{service.health.start_period_s}s",
                                          interval=f"{service.health.interval_s}s")
        if service.gpu:
            spec["deploy"] = gpu_reservation(f.node)
        spec["logging"] = LOGGING
        f.services[name] = spec
    for worker, name in zip(service.workers_on(f.node.name), names[service.replicas:], strict=True):
        # Same image, env and AppRole as the service; no RPC ports. Health: the worker touches
        # /data/run/<service>-<worker>.alive while its loop runs and its broker is connected.
        worker_spec: dict[str, Any] = {
            "image": image_tag(service),
            "platform": f"linux/{f.node.arch}",
            "command": ["python", "-m", worker.module(service.name)],
            "init": True,
            "restart": "unless-stopped",
            "stop_grace_period": "120s",  # a warm shutdown lets the running task finish
            "environment": {**service_env(f, service), **_approle_env(service, name)},
            "volumes": [
                f.volume(f"{service.name}-{worker.name}-data", "/data"),
                read_only_bind(f"./{TLS_DIR}/ca.crt", CA_CERT_IN_CONTAINER),
            ],
        }
        if worker.metrics_port is not None:
            # Its own /metrics (Prometheus scrapes it as process=<service>-<worker>).
            worker_spec["environment"]["BEV_TELEMETRY__METRICS_PORT"] = str(worker.metrics_port)
            worker_spec["ports"] = [f.publish(worker.metrics_port, worker.metrics_port)]
        if local_engines:
            worker_spec["depends_on"] = {e: {"condition": "service_healthy"} for e in local_engines}
        alive = f"/data/run/{service.name}-{worker.name}.alive"
        worker_spec["healthcheck"] = healthcheck(
            [
                "CMD",
                "python",
                "-c",
                f"import os,sys,time; sys.exit(time.time() - os.path.getmtime({alive!r}) > 60)",
            ]
        )
        worker_spec["logging"] = LOGGING
        f.services[name] = worker_spec
