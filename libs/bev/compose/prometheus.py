"""prometheus.yml for the monitoring node, from the node manifest."""

from __future__ import annotations

from typing import Any

from bev.compose.engines import NATS_EXPORTER_PORT, RULES_DIR, SCRAPED_ENGINES
from bev.compose.yaml_out import GENERATED, dump_yaml
from bev.manifest import Manifest


def render_prometheus(manifest: Manifest) -> str:
    """prometheus.yml for the monitoring node: every service's metrics port on each of its nodes,
    the NATS exporters and the engines with a native /metrics endpoint, and the rule files."""
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
        # job = the service for its replicas and its workers; `process` tells them apart (and tells
        # BEV processes from engines, which have none: the alert rules rely on it).
        targets = [(n, ports, {"process": service.name}) for n in service.nodes]
        for worker in service.workers:
            if worker.metrics_port is not None:
                process = f"{service.name}-{worker.name}"
                targets += [(n, [worker.metrics_port], {"process": process}) for n in worker.nodes or service.nodes]
        job(service.name, targets)

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
    # Relative to this file: /etc/prometheus/rules/ in the container (bev.compose.engines), and
    # deploy/<node>/rules/ beside it, so `promtool check config` checks the rules too.
    config["rule_files"] = [f"{RULES_DIR}/*.yml"]
    config["scrape_configs"] = scrape_configs
    return dump_yaml(GENERATED, config)
