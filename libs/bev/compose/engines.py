"""How engines run in production: one registry entry per engine, holding its container port, the
URL clients use for it and its compose recipe (image ports, volumes, health probes).

What runs where lives in the manifest; this module only knows how to run each engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from bev.compose.dashboards import DASHBOARDS_IN_CONTAINER, DATASOURCE_UID, PROVISIONING_IN_CONTAINER
from bev.compose.node_file import (
    LOGGING,
    SECRETS_DIR,
    TLS_DIR,
    NodeFile,
    gpu_reservation,
    healthcheck,
    http_probe,
    python_probe,
    read_only_bind,
)
from bev.engines.nats_server import ROUTE_PING_INTERVAL, ROUTE_PING_MAX
from bev.manifest import EngineSpec, Manifest, ManifestError

# NATS ports that are not client ports (the manifest's nats.port): cluster routes, monitoring.
NATS_CLUSTER_PORT = 6222
NATS_MONITOR_PORT = 8222
# nats-server has no Prometheus endpoint; the exporter sidecar translates its monitoring JSON.
NATS_EXPORTER_IMAGE = "natsio/prometheus-nats-exporter:0.17.3"
NATS_EXPORTER_PORT = 7777

# Beside the monitoring node's compose file: Prometheus' rule files and Grafana's generated files.
RULES_DIR = "rules"
GRAFANA_DIR = "grafana"

# A recipe returns the engine's compose service without what every engine gets (image, restart,
# its published client port, GPU reservation, logging); extra "ports" are published after the
# client port.
RenderEngine = Callable[[NodeFile, EngineSpec], dict[str, Any]]


@dataclass(frozen=True)
class EngineRecipe:
    container_port: int  # where the engine listens inside its container
    url_template: str  # how clients address it: {host} and {port} are filled in
    render: RenderEngine
    # Whether Prometheus scrapes the engine's own /metrics (most engines have no native endpoint).
    native_metrics: bool = False


def engine_recipe(engine: str) -> EngineRecipe:
    try:
        return ENGINES[engine]
    except KeyError:
        raise ManifestError(
            f"engine '{engine}' has no compose recipe in bev.compose (known: {', '.join(ENGINES)})"
        ) from None


def engine_url(manifest: Manifest, node: str, engine: str, *, over_tailnet: bool = False) -> str:
    """URL a container on `node` uses for `engine`: the compose service name when the engine runs
    on the same node, else the first hosting node's Tailscale address and published port."""
    spec = manifest.engines.get(engine)
    if spec is None:
        raise ManifestError(f"the compose files need engine '{engine}', which the manifest does not list")
    if node in spec.nodes and not over_tailnet:
        recipe = engine_recipe(engine)
        return recipe.url_template.format(host=engine, port=recipe.container_port)
    return tailnet_url(manifest, engine, node if node in spec.nodes else spec.nodes[0])


def tailnet_url(manifest: Manifest, engine: str, host_node: str) -> str:
    """URL of the `engine` instance on `host_node`, over Tailscale."""
    return engine_recipe(engine).url_template.format(
        host=manifest.nodes[host_node].address, port=manifest.engines[engine].port
    )


def vault_addr(manifest: Manifest, node: str) -> str:
    # Always the Tailscale address, even on the Vault node: it is the name in Vault's certificate.
    return engine_url(manifest, node, "vault", over_tailnet=True)


# --- recipes -----------------------------------------------------------------------------------


def _nats(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    routes = "\n".join(
        f"    nats-route://{f.manifest.nodes[n].address}:{NATS_CLUSTER_PORT}" for n in engine.nodes
    )
    conf = (
        f"server_name: {f.node.name}\n"
        f"listen: 0.0.0.0:{ENGINES['nats'].container_port}\n"
        f"http: 0.0.0.0:{NATS_MONITOR_PORT}\n"
        "jetstream {\n"
        "  store_dir: /data/jetstream\n"
        "  # fsync every write: a JetStream ack means the message is on disk on a quorum of nodes.\n"
        "  sync_interval: always\n"
        "}\n"
        "cluster {\n"
        "  name: bev\n"
        f"  listen: 0.0.0.0:{NATS_CLUSTER_PORT}\n"
        "  # A lost node leaves the cluster after 3 unanswered pings (~6-8 s), not nats-server's default.\n"
        f"  ping_interval: {ROUTE_PING_INTERVAL}\n"
        f"  ping_max: {ROUTE_PING_MAX}\n"
        "  routes: [\n"
        f"{routes}\n"
        "  ]\n"
        "  tls {\n"
        "    cert_file: /etc/nats/tls/nats.crt\n"
        "    key_file: /etc/nats/tls/nats.key\n"
        "    ca_file: /etc/nats/tls/ca.crt\n"
        "    verify: true\n"
        "  }\n"
        "}\n"
        "# One user per service with subject permissions: `bev deploy nats-auth secrets/nats-auth.conf`.\n"
        "include ./auth.conf\n"
    )
    f.sidecars["nats-exporter"] = {
        "image": NATS_EXPORTER_IMAGE,
        "command": [
            "-varz",
            "-connz",
            "-routez",
            "-subz",
            "-jsz=all",
            "-port",
            str(NATS_EXPORTER_PORT),
            f"http://nats:{NATS_MONITOR_PORT}",
        ],
        "restart": "unless-stopped",
        "ports": [f.publish(NATS_EXPORTER_PORT, NATS_EXPORTER_PORT)],
        "depends_on": {"nats": {"condition": "service_healthy"}},
        # A scratch image: no shell or wget to probe with. Prometheus' up{job="nats"} watches it.
        "healthcheck": {"disable": True},
        "logging": LOGGING,
    }
    return {
        "command": ["nats-server", "--config", "/etc/nats/nats.conf"],
        "configs": [f.config(f"nats_conf_{f.node.name}", conf, "/etc/nats/nats.conf")],
        "volumes": [
            f.volume("nats-data", "/data"),
            read_only_bind(f"./{TLS_DIR}/nats", "/etc/nats/tls"),
            read_only_bind(f"./{SECRETS_DIR}/nats-auth.conf", "/etc/nats/auth.conf"),
        ],
        "ports": [f.publish(NATS_CLUSTER_PORT, NATS_CLUSTER_PORT)],
        "healthcheck": healthcheck(
            http_probe(f"http://127.0.0.1:{NATS_MONITOR_PORT}/healthz?js-enabled-only=true")
        ),
    }


def _vault(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    addr = vault_addr(f.manifest, f.node.name)
    container_port = ENGINES["vault"].container_port
    config = {
        "storage": {"raft": {"path": "/vault/file", "node_id": f.node.name}},
        "listener": [
            {
                "tcp": {
                    "address": f"0.0.0.0:{container_port}",
                    "tls_cert_file": "/vault/tls/vault.crt",
                    "tls_key_file": "/vault/tls/vault.key",
                }
            }
        ],
        "api_addr": addr,
        "cluster_addr": f"https://{f.node.address}:{container_port + 1}",
        "ui": True,
        # HashiCorp's advice for integrated (raft) storage: mlock would pin its mmapped data.
        "disable_mlock": True,
    }
    return {
        "command": ["server"],
        "environment": {
            "VAULT_LOCAL_CONFIG": json.dumps(config, sort_keys=True),
            "VAULT_ADDR": f"https://127.0.0.1:{container_port}",
        },
        "volumes": [
            f.volume("vault-data", "/vault/file"),
            read_only_bind(f"./{TLS_DIR}/vault", "/vault/tls"),
        ],
        # Healthy once Vault answers, sealed or not: services then fail with "sealed, unseal it"
        # and restart, instead of compose refusing to start them at all.
        "healthcheck": healthcheck(
            ["CMD-SHELL", "vault status -tls-skip-verify >/dev/null 2>&1; test $$? -ne 1"]
        ),
    }


def _postgres(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    return {
        "environment": {
            "POSTGRES_DB": "bev",
            "POSTGRES_PASSWORD_FILE": f"/run/secrets/{f.secret('postgres_password')}",
        },
        "secrets": ["postgres_password"],
        "volumes": [f.volume("postgres-data", "/var/lib/postgresql/data")],
        "shm_size": "256m",
        "healthcheck": healthcheck(["CMD", "pg_isready", "-U", "postgres", "-d", "bev"]),
    }


def _redis_probe() -> list[str]:
    # With an ACL file the default user may be disabled: NOAUTH still proves the server answers.
    return ["CMD-SHELL", "redis-cli ping | grep -Eq 'PONG|NOAUTH'"]


def _redis(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    acl = f.secret("redis_users_acl")
    return {
        "command": ["redis-server", "--appendonly", "yes", "--aclfile", f"/run/secrets/{acl}"],
        "secrets": [acl],
        "volumes": [f.volume("redis-data", "/data")],
        "healthcheck": healthcheck(_redis_probe()),
    }


def _falkordb(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    acl = f.secret("falkordb_users_acl")
    return {
        "environment": {"REDIS_ARGS": f"--appendonly yes --aclfile /run/secrets/{acl}"},
        "secrets": [acl],
        "volumes": [f.volume("falkordb-data", "/var/lib/falkordb/data")],
        "healthcheck": healthcheck(_redis_probe()),
    }


def _neo4j(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    return {
        # NEO4J_AUTH_FILE holds "neo4j/<password>".
        "environment": {"NEO4J_AUTH_FILE": f"/run/secrets/{f.secret('neo4j_auth')}"},
        "secrets": ["neo4j_auth"],
        "volumes": [f.volume("neo4j-data", "/data")],
        "healthcheck": healthcheck(http_probe("http://127.0.0.1:7474/"), start_period="60s"),
    }


def _vllm(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    model = engine.models.get(f.node.name)
    if model is None:
        raise ManifestError(f"engine '{engine.name}' runs on '{f.node.name}' but names no model for it")
    port = ENGINES["vllm"].container_port
    return {
        "entrypoint": ["vllm"],
        "command": [
            "serve",
            model.model,
            # Clients ask for a tier, not a model file: the tier is the served name.
            "--served-model-name",
            model.tier,
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--gpu-memory-utilization",
            f"{model.gpu_memory_utilization:.2f}",
            "--max-model-len",
            str(model.max_model_len),
        ],
        "environment": {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        "ipc": "host",  # PyTorch shares tensors through /dev/shm
        "volumes": ["${BEV_MODELS_DIR:-/srv/bev/models}:/models:ro"],
        "healthcheck": healthcheck(
            python_probe(f"http://127.0.0.1:{port}/health", python="python3"), start_period="900s"
        ),
    }


def _prometheus(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    return {
        "command": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=30d",
            "--web.enable-lifecycle",
        ],
        "volumes": [
            read_only_bind("./prometheus.yml", "/etc/prometheus/prometheus.yml"),
            # Alert and recording rules (hand-written, plus the generated latency thresholds);
            # prometheus.yml loads rules/*.yml relative to itself.
            read_only_bind(f"./{RULES_DIR}", f"/etc/prometheus/{RULES_DIR}"),
            f.volume("prometheus-data", "/prometheus"),
        ],
        "healthcheck": healthcheck(http_probe("http://127.0.0.1:9090/-/healthy")),
    }


def _alertmanager(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    return {
        "command": ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"],
        "volumes": [
            read_only_bind("./alertmanager.yml", "/etc/alertmanager/alertmanager.yml"),
            f.volume("alertmanager-data", "/alertmanager"),
        ],
        "healthcheck": healthcheck(http_probe("http://127.0.0.1:9093/-/healthy")),
    }


def _grafana(f: NodeFile, engine: EngineSpec) -> dict[str, Any]:
    datasources = yaml.safe_dump(
        {
            "apiVersion": 1,
            "datasources": [
                {
                    "name": "Prometheus",
                    "type": "prometheus",
                    "uid": DATASOURCE_UID,  # what the provisioned dashboards' panels name
                    "access": "proxy",
                    "url": engine_url(f.manifest, f.node.name, "prometheus"),
                    "isDefault": True,
                }
            ],
        },
        sort_keys=False,
    )
    service: dict[str, Any] = {
        "environment": {
            "GF_SECURITY_ADMIN_PASSWORD__FILE": f"/run/secrets/{f.secret('grafana_admin_password')}",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
        },
        "secrets": ["grafana_admin_password"],
        "configs": [
            f.config("grafana_datasources", datasources, "/etc/grafana/provisioning/datasources/bev.yaml")
        ],
        "volumes": [
            f.volume("grafana-data", "/var/lib/grafana"),
            # The dashboards and the provider that loads them, generated by `bev deploy render`.
            read_only_bind(f"./{GRAFANA_DIR}/dashboards", DASHBOARDS_IN_CONTAINER),
            read_only_bind(f"./{GRAFANA_DIR}/provisioning/dashboards", PROVISIONING_IN_CONTAINER),
        ],
        "healthcheck": healthcheck(http_probe("http://127.0.0.1:3000/api/health")),
    }
    if "prometheus" in f.manifest.engines and f.node.name in f.manifest.engines["prometheus"].nodes:
        service["depends_on"] = {"prometheus": {"condition": "service_healthy"}}
    return service


ENGINES: dict[str, EngineRecipe] = {
    "nats": EngineRecipe(4222, "nats://{host}:{port}", _nats),
    "vault": EngineRecipe(8200, "https://{host}:{port}", _vault),
    "postgres": EngineRecipe(5432, "postgresql://{host}:{port}/bev", _postgres),
    "redis": EngineRecipe(6379, "redis://{host}:{port}/0", _redis),
    "falkordb": EngineRecipe(6379, "redis://{host}:{port}", _falkordb),
    "neo4j": EngineRecipe(7687, "bolt://{host}:{port}", _neo4j),
    "vllm": EngineRecipe(8000, "http://{host}:{port}/v1", _vllm, native_metrics=True),
    "prometheus": EngineRecipe(9090, "http://{host}:{port}", _prometheus, native_metrics=True),
    "alertmanager": EngineRecipe(9093, "http://{host}:{port}", _alertmanager, native_metrics=True),
    "grafana": EngineRecipe(3000, "http://{host}:{port}", _grafana, native_metrics=True),
}

# Engines whose own /metrics Prometheus scrapes (the rest have no native endpoint).
SCRAPED_ENGINES = tuple(name for name, recipe in ENGINES.items() if recipe.native_metrics)


def render_engine(f: NodeFile, engine: EngineSpec) -> None:
    """Add `engine`'s compose service to `f`, followed by the sidecars its recipe adds."""
    recipe = engine_recipe(engine.name)
    specific = recipe.render(f, engine)
    service: dict[str, Any] = {"image": engine.image, "restart": "unless-stopped"}
    ports = [f.publish(engine.port, recipe.container_port), *specific.pop("ports", [])]
    service.update(specific)
    service["ports"] = ports
    if engine.gpu:
        service["deploy"] = gpu_reservation(f.node)
    service["logging"] = LOGGING
    f.services[engine.name] = service
    f.services.update(f.sidecars)
    f.sidecars.clear()
