"""Prometheus and Alertmanager for the one-machine fleet: the Debian binaries `make setup` installs.

Prometheus scrapes what the supervisor lists in `targets/*.json` (file-based discovery: it reloads
a file when it changes, so instances that come and go are scraped without a restart), evaluates the
fleet's alert rules (deploy/oracle1/rules/, the same files ORACLE1 mounts) and sends what fires to
Alertmanager.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from bev.engines._base import Engine, EngineStartError, http_get

PROMETHEUS_BINARY = "prometheus"
ALERTMANAGER_BINARY = "prometheus-alertmanager"  # Debian's name; upstream calls it `alertmanager`


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise EngineStartError(f"{names[0]} is not installed (run `make setup`: it installs the Debian package)")


class Prometheus(Engine):
    name = "prometheus"

    def __init__(self, data_dir: Path, port: int = 0, host: str = "127.0.0.1", *,
                 rule_files: list[Path] | None = None, alertmanager: str = "",
                 scrape_interval_s: float = 5.0, evaluation_interval_s: float = 5.0) -> None:
        super().__init__(data_dir, port, host)
        self.rule_files = [Path(p).absolute() for p in rule_files or []]
        self.alertmanager = alertmanager  # host:port, "" = alerts go nowhere
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def targets_dir(self) -> Path:
        return self.data_dir / "targets"

    def config(self) -> dict[str, Any]:
        interval = f"{self.scrape_interval_s:g}s"
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                # A frozen target must count as down within one interval, not after 10 s.
                "scrape_timeout": f"{min(self.scrape_interval_s, 10.0):g}s",
                "evaluation_interval": f"{self.evaluation_interval_s:g}s",
                "external_labels": {"fleet": "bev"},
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": "bev", "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")]}]},
            ],
        }
        if self.alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        return config

    def prepare(self) -> None:
        super().prepare()
        self.targets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.data_dir / "prometheus.yml").write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def write_targets(self, name: str, groups: list[dict[str, Any]]) -> None:
        """Replace targets/<name>.json: [{"targets": ["host:port"], "labels": {...}}, ...].

        Written beside it and renamed over it, so Prometheus never reads a half-written file."""
        self.targets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.targets_dir / f"{name}.json"
        staged = path.with_name(f".{path.name}.tmp")  # not *.json: discovery ignores it
        staged.write_text(json.dumps(groups, indent=1, sort_keys=True))
        staged.replace(path)

    def command(self) -> list[str]:
        return [
            _binary(PROMETHEUS_BINARY),
            f"--config.file={self.data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            "--storage.tsdb.retention.time=7d",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
        ]

    def _probe(self) -> None:
        http_get(f"{self.url}/-/ready")


class Alertmanager(Engine):
    name = "alertmanager"

    def __init__(self, data_dir: Path, port: int = 0, host: str = "127.0.0.1", *, config_file: Path) -> None:
        super().__init__(data_dir, port, host)
        self.config_file = Path(config_file).absolute()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            _binary(ALERTMANAGER_BINARY, "alertmanager"),
            f"--config.file={self.config_file}",
            f"--storage.path={self.data_dir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",  # one instance: no gossip port
        ]

    def _probe(self) -> None:
        http_get(f"{self.url}/-/ready")
