"""The generated files: each node's docker-compose.yml; where Prometheus runs, prometheus.yml and the
latency thresholds among its rules; where Grafana runs, its dashboards and their provider; writing
them, finding stale ones, and the `bev deploy render` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bev.compose.dashboards import PROVIDER_FILE, render_dashboard_provider, render_dashboards
from bev.compose.engines import GRAFANA_DIR, RULES_DIR, render_engine
from bev.compose.node_file import SECRETS_DIR, TLS_DIR, NodeFile
from bev.compose.prometheus import render_prometheus
from bev.compose.rules import LATENCY_THRESHOLDS_FILE, render_latency_thresholds
from bev.compose.services import render_service
from bev.compose.yaml_out import GENERATED, dump_yaml
from bev.manifest import REPO_ROOT, Manifest, ManifestError, default_manifest_path, load_manifest


def render_node(manifest: Manifest, node: str) -> str:
    """YAML text of deploy/<node>/docker-compose.yml: the engines and services placed on `node`."""
    if node not in manifest.nodes:
        raise ManifestError(f"unknown node '{node}' (known: {', '.join(manifest.nodes)})")
    spec = manifest.nodes[node]
    f = NodeFile(manifest, spec)
    for engine in manifest.engines_on(node):
        render_engine(f, engine)
    for service in manifest.services_on(node):
        render_service(f, service)
    header = (
        GENERATED
        + f"# node {node}: {spec.role}, {spec.arch}, Tailscale {spec.address}"
        + (f", GPUs {', '.join(spec.gpus)}" if spec.gpus else "")
        + "\n#\n"
        f"# Start it with `make deploy-{node}` (`bev deploy up {node}`): it fetches each container's AppRole\n"
        "# role id and a fresh single-use secret id from the operator's Vault and hands them to\n"
        "# `docker compose up` in its environment (${BEV_ROLE_ID_<SERVICE>}, ${BEV_SECRET_ID_<CONTAINER>}),\n"
        "# so no secret id is written anywhere. Beside this file (none of it is committed):\n"
        f"#   {SECRETS_DIR}/<name>         each Docker secret listed at the end of this file\n"
        f"#   {TLS_DIR}/ca.crt             the fleet CA (it signed Vault's and NATS' certificates)\n"
        "# Ports are published on the Tailscale address only, so tailscaled must be up before Docker.\n"
    )
    return dump_yaml(header, f.document())


def rendered_files(manifest: Manifest, deploy_dir: Path) -> dict[Path, str]:
    """Every generated file and its content, in a stable order."""
    files = {deploy_dir / node / "docker-compose.yml": render_node(manifest, node) for node in manifest.nodes}
    if "prometheus" in manifest.engines:
        prometheus = render_prometheus(manifest)
        thresholds = render_latency_thresholds(manifest)
        for node in manifest.engines["prometheus"].nodes:
            files[deploy_dir / node / "prometheus.yml"] = prometheus
            files[deploy_dir / node / RULES_DIR / LATENCY_THRESHOLDS_FILE] = thresholds
    if "grafana" in manifest.engines:
        provider = render_dashboard_provider()
        dashboards = render_dashboards()
        for node in manifest.engines["grafana"].nodes:
            grafana = deploy_dir / node / GRAFANA_DIR
            files[grafana / "provisioning" / "dashboards" / PROVIDER_FILE] = provider
            for name, text in dashboards.items():
                files[grafana / "dashboards" / name] = text
    return files


def write_all(manifest: Manifest, deploy_dir: Path) -> list[Path]:
    """Write every generated file (rendered_files), creating its folders."""
    written = []
    for path, text in rendered_files(manifest, deploy_dir).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_files(manifest: Manifest, deploy_dir: Path) -> list[Path]:
    """Generated files whose committed content differs from a fresh render (or that are missing)."""
    stale = []
    for path, text in rendered_files(manifest, deploy_dir).items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bev.compose", description="Render deploy/<node>/ files from the node manifest."
    )
    parser.add_argument("--manifest", type=Path, help="default: $BEV_MANIFEST, else deploy/manifest.yaml")
    parser.add_argument("--deploy-dir", type=Path, help="default: the manifest's folder")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    manifest_path: Path = args.manifest or default_manifest_path()
    deploy_dir: Path = args.deploy_dir or manifest_path.parent
    try:
        manifest = load_manifest(manifest_path)
        if args.check:
            stale = stale_files(manifest, deploy_dir)
            for path in stale:
                print(f"stale: {_shown(path)}", file=sys.stderr)
            if stale:
                print("run `make deploy-files` and commit the result", file=sys.stderr)
            return 1 if stale else 0
        for path in write_all(manifest, deploy_dir):
            print(f"wrote {_shown(path)}")
    except ManifestError as exc:
        print(f"bev deploy render: {exc}", file=sys.stderr)
        return 2
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
