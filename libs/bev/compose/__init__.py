"""Render deploy/<node>/docker-compose.yml, the Prometheus config and the Grafana dashboards from the
node manifest.

`python -m bev.compose` (wired as `bev deploy render` / `make deploy-files`) rewrites the
committed files; `--check` only reports stale ones. Output is deterministic (manifest order, no
timestamps), so a test can compare the committed files with a fresh render.

How engines run in production (images' ports, volumes, health probes) lives here, in one
recipe per engine; what runs where lives in the manifest.

Modules, each importing only those listed before it:
- `yaml_out`: the header of every generated file and the YAML dumper.
- `node_file`: one node's compose document and shared building blocks (probes, bind mounts).
- `dashboards`: the Grafana dashboards (grafana-foundation-sdk) and their provisioning file.
- `engines`: the engine registry (container port, client URL, compose recipe per engine).
- `services`: the services' replicas and workers.
- `prometheus`: prometheus.yml.
- `rules`: the generated rule file (each RPC method's latency threshold, from its proto).
- `files`: the compose file of a node, all generated files, writing/checking them, the CLI.
- `deploy_node`: `bev deploy up|down NODE` (`make deploy-<node>`): checks Docker, Compose, Tailscale
  and Vault, then runs the node's compose file with fresh AppRole secret ids. Not re-exported here:
  it talks to Docker and Vault, which rendering files never needs.
"""

from bev.compose.dashboards import evaluable, panel_queries, queries_that_may_be_empty, render_dashboards
from bev.compose.engines import (
    ENGINES,
    NATS_CLUSTER_PORT,
    NATS_EXPORTER_IMAGE,
    NATS_EXPORTER_PORT,
    NATS_MONITOR_PORT,
    SCRAPED_ENGINES,
    EngineRecipe,
    engine_url,
)
from bev.compose.files import main, render_node, rendered_files, stale_files, write_all
from bev.compose.node_file import SECRETS_DIR, TLS_DIR
from bev.compose.prometheus import render_prometheus
from bev.compose.rules import render_latency_thresholds
from bev.compose.services import CA_CERT_IN_CONTAINER, GRPC_TLS_IN_CONTAINER, image_tag
from bev.compose.yaml_out import GENERATED

__all__ = [
    "CA_CERT_IN_CONTAINER",
    "ENGINES",
    "GENERATED",
    "GRPC_TLS_IN_CONTAINER",
    "NATS_CLUSTER_PORT",
    "NATS_EXPORTER_IMAGE",
    "NATS_EXPORTER_PORT",
    "NATS_MONITOR_PORT",
    "SCRAPED_ENGINES",
    "SECRETS_DIR",
    "TLS_DIR",
    "EngineRecipe",
    "engine_url",
    "evaluable",
    "image_tag",
    "main",
    "panel_queries",
    "queries_that_may_be_empty",
    "render_dashboards",
    "render_latency_thresholds",
    "render_node",
    "render_prometheus",
    "rendered_files",
    "stale_files",
    "write_all",
]
