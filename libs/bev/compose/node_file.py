"""One node's compose document and the building blocks engine and service entries share
(health checks, bind mounts, GPU reservations, logging)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bev.manifest import Manifest, NodeSpec

# Where the node's operator puts what must never be committed (see the header of each file).
SECRETS_DIR = "secrets"
TLS_DIR = "tls"

LOGGING = {"driver": "json-file", "options": {"max-size": "20m", "max-file": "5"}}


def healthcheck(test: list[str], *, start_period: str = "30s", interval: str = "15s") -> dict[str, Any]:
    return {"test": test, "interval": interval, "timeout": "5s", "retries": 5, "start_period": start_period}


def http_probe(url: str) -> list[str]:
    # busybox wget: present in the alpine-based engine images, which have no curl.
    return ["CMD", "wget", "-q", "--spider", url]


def python_probe(url: str, python: str = "python") -> list[str]:
    return ["CMD", python, "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"]


def gpu_reservation(node: NodeSpec) -> dict[str, Any]:
    devices = [{"driver": "nvidia", "device_ids": list(node.gpus), "capabilities": ["gpu"]}]
    return {"resources": {"reservations": {"devices": devices}}}


def read_only_bind(source: str, target: str) -> dict[str, Any]:
    # Long syntax so a missing file fails `up` instead of Docker creating an empty directory there.
    return {
        "type": "bind",
        "source": source,
        "target": target,
        "read_only": True,
        "bind": {"create_host_path": False},
    }


@dataclass
class NodeFile:
    """One node's compose document, built up engine by engine and service by service."""

    manifest: Manifest
    node: NodeSpec
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Helpers an engine recipe adds; they follow their engine in the file.
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def volume(self, name: str, target: str) -> str:
        self.volumes[name] = {}
        return f"{name}:{target}"

    def secret(self, name: str) -> str:
        # Docker secrets are files the operator writes; compose mounts them at /run/secrets/<name>.
        self.secrets[name] = {"file": f"./{SECRETS_DIR}/{name}"}
        return name

    def config(self, name: str, content: str, target: str) -> dict[str, str]:
        self.configs[name] = {"content": content}
        return {"source": name, "target": target}

    def publish(self, port: int, container_port: int) -> str:
        # Bound to the Tailscale address only: nothing is exposed on the node's other interfaces.
        return f"{self.node.address}:{port}:{container_port}"

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": f"bev-{self.node.name}", "services": self.services}
        for key, section in (("volumes", self.volumes), ("configs", self.configs), ("secrets", self.secrets)):
            if section:
                doc[key] = section
        return doc
