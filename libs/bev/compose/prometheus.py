"""prometheus.yml for the monitoring node, from the node manifest."""

from __future__ import annotations

from typing import Any

from bev.compose.engines import NATS_EXPORTER_PORT, SCRAPED_ENGINES
from bev.compose.yaml_out import GENERATED, dump_yaml
from bev.manifest import Manifest


def render_prometheus(manifest: Manifest) -> str:
    """prometheus.yml for the monitoring node: every service's metrics port on each of its nodes,
    the NATS exporters and the engines with a native /metrics endpoint."""
    scrape_configs: list[dict[str, Any]] = []

    def job(name: str, targets: list[tuple[str, list[int], dict[str, str]]], path: str | None = None) -> None:
        static_configs = [
            {
                "targets": [f"{manifest.nodes[node].address}:{port}" for port in ports],
                "labels": {"node": node, **labels},
            }
            for node, ports, labels in targets
        ]
        entry: dict[str, Any] = {"job_name": name}
        if path is not None:
            entry["metrics_path"] = path
        entry["static_configs"] = static_configs
        scrape_configs.append(entry)

    if "nats" in manifest.engines:
        job("nats", [(n, [NATS_EXPORTER_PORT], {}) for n in manifest.engines["nats"].nodes])
    for engine in manifest.engines.values():
        if engine.name in SCRAPED_ENGINES:
            job(
                engine.name,
                [
                    (n, [engine.port], {"tier": engine.models[n].tier} if n in engine.models else {})
                    for n in engine.nodes
                ],
            )
    for service in manifest.services.values():
        ports = [service.replica_ports(k)["metrics"] for k in range(service.replicas)]
        job(service.name, [(n, ports, {}) for n in service.nodes])

    config: dict[str, Any] = {
        "global": {
            "scrape_interval": "15s",
            "scrape_timeout": "10s",
            "evaluation_interval": "15s",
            "external_labels": {"fleet": "bev"},
        }
    }
    if "alertmanager" in manifest.engines:
        am = manifest.engines["alertmanager"]
        config["alerting"] = {
            "alertmanagers": [
                {
                    "static_configs": [
                        {"targets": [f"{manifest.nodes[n].address}:{am.port}" for n in am.nodes]}
                    ]
                }
            ]
        }
    config["scrape_configs"] = scrape_configs
    return dump_yaml(GENERATED, config)
