"""`make deploy-<node>` / `make undeploy-<node>` (`bev deploy up|down`), driven through make with
stand-in `docker` and `tailscale` programs first on PATH and a real OpenBao as the operator's Vault.

The stand-ins record their argv in one log and answer like the real tools (output recorded from
Docker 27.3 / Compose v2.29.7 and Tailscale 1.76). For `docker compose up` the stand-in does what
compose and the containers would: it interpolates the file's ${BEV_ROLE_ID_*} and ${BEV_SECRET_ID_*}
from its environment and logs in to Vault with each pair, twice (a single-use id works once). It
records only the variable's name, the id's length and its SHA-256, never the id, so the test can
search every file it can reach for the ids afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from bev.engines import NatsServer, OpenBao, free_port, seed_fleet
from bev.engines.vault_seed import APPROLE_MOUNT, role_name
from bev.manifest import DEFAULT_MANIFEST, REPO_ROOT, Manifest, load_manifest

NODE = "thanos"
NATS_OPERATOR = {"user": "operator", "password": "operator-password-for-tests"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

DOCKER = r'''#!{python}
"""Stand-in for the docker CLI (see tests/deploy/test_deploy_node.py)."""
import hashlib, json, os, re, sys

import hvac
import hvac.exceptions
import yaml

args = sys.argv[1:]
entry = {"argv": ["docker", *args]}


def done(out="", err="", rc=0):
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(rc)


def logins(doc):
    """What each service container would do at start: log in with its interpolated AppRole ids."""
    client = hvac.Client(url=os.environ["STANDIN_VAULT_ADDR"])
    seen = {}
    for name, spec in doc["services"].items():
        env = spec.get("environment", {})
        if "BEV_VAULT__SECRET_ID" not in env:
            continue
        role_var = re.fullmatch(r"\$\{(\w+):-\}", env["BEV_VAULT__ROLE_ID"]).group(1)
        secret_var = re.fullmatch(r"\$\{(\w+):-\}", env["BEV_VAULT__SECRET_ID"]).group(1)
        secret_id = os.environ.get(secret_var, "")
        outcomes = []
        for _ in range(2):
            try:
                client.auth.approle.login(role_id=os.environ.get(role_var, ""), secret_id=secret_id)
                outcomes.append("ok")
            except hvac.exceptions.VaultError:
                outcomes.append("refused")
        seen[name] = {"variable": secret_var, "length": len(secret_id),
                      "sha256": hashlib.sha256(secret_id.encode()).hexdigest(), "logins": outcomes}
    return seen


def ps_row(name, spec):
    probed = not spec.get("healthcheck", {}).get("disable", False)
    health = ("unhealthy" if name in os.environ.get("STANDIN_UNHEALTHY", "").split(",") else "healthy") if probed else ""
    status = "Up 2 minutes" + (f" ({health})" if health else "")
    return {"Command": "\"docker-entrypoint.sh\"", "CreatedAt": "2025-01-14 10:02:11 +0000 UTC", "ExitCode": 0,
            "Health": health, "ID": hashlib.sha256(name.encode()).hexdigest()[:12], "Image": spec.get("image", ""),
            "Labels": "", "LocalVolumes": "1", "Mounts": "", "Name": f"{doc['name']}-{name}-1",
            "Names": f"{doc['name']}-{name}-1", "Networks": f"{doc['name']}_default", "Ports": "",
            "Project": doc["name"], "Publishers": None, "RunningFor": "2 minutes ago", "Service": name,
            "Size": "0B", "State": "running", "Status": status}


if args[:1] == ["version"]:
    if os.environ.get("STANDIN_DOCKERD") == "down":
        done("", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                 "Is the docker daemon running?\n", 1)
    done("27.3.1\n")
if args[:2] == ["compose", "version"]:
    done(os.environ.get("STANDIN_COMPOSE_VERSION", "Docker Compose version v2.29.7") + "\n")
if args[:2] == ["compose", "-f"]:
    with open(args[2]) as f:
        doc = yaml.safe_load(f)
    command = args[3]
    if command == "up":
        entry["containers"] = logins(doc)
        entry["operator_token_in_env"] = "BEV_VAULT__TOKEN" in os.environ
    if command == "ps":
        done("".join(json.dumps(ps_row(n, s)) + "\n" for n, s in doc["services"].items()))
    if command in ("build", "pull", "up", "down", "logs"):
        done()
done("", f"unknown docker command: {args}\n", 125)
'''

TAILSCALE = r'''#!{python}
"""Stand-in for the tailscale CLI (see tests/deploy/test_deploy_node.py)."""
import json, os, sys

with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps({"argv": ["tailscale", *sys.argv[1:]]}) + "\n")
if os.environ.get("STANDIN_TAILSCALE") == "stopped":
    print("Tailscale is stopped.")
    sys.exit(1)
if sys.argv[1:] == ["status"]:
    print("100.64.0.1   thanos     ops@         linux   -\n"
          "100.64.0.2   starlord   ops@         linux   idle, tx 1204 rx 980\n"
          "100.64.0.3   oracle1    ops@         linux   idle, tx 880 rx 1016")
    sys.exit(0)
if sys.argv[1:] == ["ip"]:
    print(os.environ.get("STANDIN_TAILSCALE_IP", "100.64.0.1") + "\nfd7a:115c:a1e0::1")
    sys.exit(0)
sys.exit(2)
'''


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(DEFAULT_MANIFEST)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory, manifest: Manifest) -> Iterator[OpenBao]:
    """The operator's Vault: its own OpenBao, seeded like the fleet's (other tests' seeding of the
    shared one would rewrite the same AppRoles)."""
    with OpenBao(tmp_path_factory.mktemp("operator-vault")) as server:
        seed_fleet(server.addr, server.root_token, list(manifest.services), {"nats/operator": NATS_OPERATOR}, {})
        yield server


@pytest.fixture(scope="module")
def operator_token(vault: OpenBao, manifest: Manifest) -> str:
    """A token allowed only what `bev deploy up thanos` needs: each thanos service's role id, new
    secret ids for it, and the NATS operator user."""
    client = hvac.Client(url=vault.addr, token=vault.root_token)
    rules = [f'path "auth/{APPROLE_MOUNT}/role/{role_name(s.name)}/{what}" {{ capabilities = ["{cap}"] }}'
             for s in manifest.services_on(NODE) for what, cap in (("role-id", "read"), ("secret-id", "update"))]
    rules.append('path "secret/data/bev/nats/operator" { capabilities = ["read"] }')
    client.sys.create_or_update_policy(name="deploy-thanos", policy="\n".join(rules))
    return str(client.auth.token.create(policies=["deploy-thanos"], ttl="1h")["auth"]["client_token"])


def operator_files(doc: dict[str, Any]) -> list[str]:
    """What the operator puts beside the compose file: Docker secrets, and the bind mounts compose
    must not create (the file's header lists them)."""
    paths = [s["file"] for s in doc.get("secrets", {}).values()]
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume.get("bind", {}).get("create_host_path") is False:
                paths.append(volume["source"])
    return sorted({p.removeprefix("./") for p in paths})


@pytest.fixture
def deploy_dir(tmp_path: Path) -> Path:
    """A copy of deploy/ with the manifest and thanos' compose file, and the operator's files."""
    deploy = tmp_path / "deploy"
    (deploy / NODE).mkdir(parents=True)
    shutil.copy(DEFAULT_MANIFEST, deploy / "manifest.yaml")
    compose = DEFAULT_MANIFEST.parent / NODE / "docker-compose.yml"
    shutil.copy(compose, deploy / NODE / "docker-compose.yml")
    for relative in operator_files(yaml.safe_load(compose.read_text(encoding="utf-8"))):
        path = deploy / NODE / relative
        if relative.startswith("secrets/") or path.suffix:  # Docker secrets, nats-auth.conf, ca.crt
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("stand-in\n")
        else:
            path.mkdir(parents=True, exist_ok=True)  # tls/<service>, tls/nats, tls/vault: folders
    return deploy


@pytest.fixture
def standins(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", DOCKER), ("tailscale", TAILSCALE)):
        path = bin_dir / name
        path.write_text(text.replace("{python}", sys.executable, 1))
        path.chmod(0o755)
    return bin_dir


@pytest.fixture
def env(tmp_path: Path, deploy_dir: Path, standins: Path, vault: OpenBao, operator_token: str,
        nats_server: NatsServer) -> dict[str, str]:
    """A clean environment: nothing of the developer's BEV_* or PATH, only what an operator sets."""
    (tmp_path / "home").mkdir()
    return {
        "PATH": str(standins),  # make prepends .venv/bin; bash and python are called by absolute path
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "BEV_MANIFEST": str(deploy_dir / "manifest.yaml"),
        "BEV_VAULT__ADDR": vault.addr,
        "BEV_VAULT__TOKEN": operator_token,
        "BEV_NATS__URL": nats_server.url,
        "STANDIN_LOG": str(tmp_path / "calls.jsonl"),
        "STANDIN_VAULT_ADDR": vault.addr,
    }


def make(target: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    make_program = shutil.which("make")
    assert make_program is not None, "GNU make is needed to drive `make deploy-<node>`"
    return subprocess.run([make_program, "--no-print-directory", target], cwd=REPO_ROOT, env={**env, **extra},
                          capture_output=True, text=True, timeout=120, check=False)


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["STANDIN_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def argvs(env: dict[str, str]) -> list[str]:
    """Each call as one string, the compose file path shortened to F."""
    compose = str(Path(env["BEV_MANIFEST"]).parent / NODE / "docker-compose.yml")
    return [" ".join(c["argv"]).replace(compose, "F") for c in calls(env)]


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """bev's stderr, exactly one line, after bev exited 1 (make itself then exits 2, saying `Error 1`)."""
    assert result.returncode == 2 and re.search(r"^make: \*\*\* \[.*\] Error 1$", result.stderr, re.M), result.stderr
    lines = [line for line in result.stderr.splitlines() if line and not line.startswith("make:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bev: "), lines[0]
    return lines[0]


CHECKS = ["docker version --format {{.Server.Version}}", "docker compose version", "tailscale status", "tailscale ip"]


def test_deploy_checks_then_starts_with_a_fresh_secret_id_per_container(
    env: dict[str, str], manifest: Manifest, tmp_path: Path
) -> None:
    result = make(f"deploy-{NODE}", env)
    assert result.returncode == 0, result.stdout + result.stderr
    # The order: every check first, then build, pull, up with the ids, then health polling.
    assert argvs(env)[:7] == [*CHECKS, "docker compose -f F build",
                              "docker compose -f F pull --ignore-buildable --policy missing",
                              "docker compose -f F up --detach --no-build --remove-orphans"]
    assert argvs(env)[7:] and all(a == "docker compose -f F ps --all --format json" for a in argvs(env)[7:])

    up = next(c for c in calls(env) if c["argv"][4:5] == ["up"])
    containers = up["containers"]
    # Every replica and worker placed on thanos, and only those, got its own id.
    expected = {f"{s.name}-{w.name}" for s in manifest.services_on(NODE) for w in s.workers_on(NODE)}
    expected |= {s.name for s in manifest.services_on(NODE)}
    assert set(containers) == expected
    assert len({c["sha256"] for c in containers.values()}) == len(containers)
    for name, container in containers.items():
        assert container["length"] == 36, name  # a UUID
        assert container["logins"] == ["ok", "refused"], f"{name}: a valid, single-use secret id"
    assert up["operator_token_in_env"] is False

    # No secret id in any file the deploy or the stand-ins could write: this test's folder (the
    # deploy copy, HOME, the call log), and the checkout's deploy/ folder.
    hashes = {c["sha256"] for c in containers.values()}
    for root in (tmp_path, DEFAULT_MANIFEST.parent):
        for path in root.rglob("*"):
            if path.is_file():
                for found in UUID.findall(path.read_text(errors="replace")):
                    assert hashlib.sha256(found.encode()).hexdigest() not in hashes, f"a secret id is in {path}"

    # Progress, then the bus's view: nothing serves on this test bus, so every service is named.
    assert "docker: engine 27.3.1" in result.stdout and "compose: v2.29.7" in result.stdout
    assert "tailscale: up, 100.64.0.1 is this machine" in result.stdout
    assert f"BEV on {NODE}" in result.stdout
    missing = re.search(r"^not on the bus yet: (.+)$", result.stdout, re.M)
    assert missing and missing.group(1).split(", ") == [s.name for s in manifest.services_on(NODE)]


def test_without_the_bus_the_containers_health_is_printed(env: dict[str, str]) -> None:
    closed = f"nats://127.0.0.1:{free_port('127.0.0.1')}"
    result = make(f"deploy-{NODE}", env, BEV_NATS__URL=closed, DEPLOY_FLAGS="--no-build")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "docker compose -f F build" not in argvs(env)
    assert "bev status unavailable: " in result.stdout and "127.0.0.1" in result.stdout
    table = result.stdout.split("the containers' health from Docker instead:", 1)[1]
    assert re.search(r"embeddings\s+│\s+running\s+│\s+healthy", table)
    assert re.search(r"nats-exporter\s+│\s+running\s+│\s+-", table)  # no healthcheck: running is enough


@pytest.mark.parametrize(
    ("case", "change", "message", "calls_before"),
    [
        ("docker missing", {"STANDIN_NO_DOCKER": "1"},
         "bev: docker not found on PATH: install Docker Engine (https://docs.docker.com/engine/install/)", 0),
        ("daemon down", {"STANDIN_DOCKERD": "down"},
         "bev: Docker's daemon does not answer: Cannot connect to the Docker daemon at "
         "unix:///var/run/docker.sock. Is the docker daemon running?; start it (`sudo systemctl start docker`) "
         "or add yourself to the docker group", 1),
        ("compose v1", {"STANDIN_COMPOSE_VERSION": "docker-compose version 1.29.2, build 5becea4c"},
         "bev: Docker Compose v2.24 or later is needed, found 1.29.2: install the docker-compose-plugin package", 2),
        ("old compose v2", {"STANDIN_COMPOSE_VERSION": "Docker Compose version v2.20.2"},
         "bev: Docker Compose v2.24 or later is needed, found 2.20.2: install the docker-compose-plugin package", 2),
        ("tailscale stopped", {"STANDIN_TAILSCALE": "stopped"},
         "bev: Tailscale is not up (Tailscale is stopped.): start it (`sudo tailscale up`); the node's ports are "
         "published on its Tailscale address", 3),
        ("another machine", {"STANDIN_TAILSCALE_IP": "100.64.0.3"},
         "bev: this machine's Tailscale address is 100.64.0.3, fd7a:115c:a1e0::1, not 100.64.0.1 "
         "(thanos in deploy/manifest.yaml): run this on thanos", 4),
        ("no token", {"BEV_VAULT__TOKEN": ""},
         "bev: no Vault token: set BEV_VAULT__TOKEN to an operator token for {addr} (and BEV_VAULT__ADDR if "
         "Vault is elsewhere)", 4),
        ("vault unreachable", {"BEV_VAULT__ADDR": "http://127.0.0.1:{closed}"},
         "bev: Vault at http://127.0.0.1:{closed} is unreachable (connection refused); start it or set "
         "BEV_VAULT__ADDR; thanos runs Vault itself: start and unseal it first (`docker compose -f {compose} "
         "up -d vault`, then `vault operator unseal`)", 4),
        ("token refused", {"BEV_VAULT__TOKEN": "hvs.not-a-token"},
         "bev: Vault: reading the role id of service 'reasoning' (AppRole bev-reasoning) failed: permission "
         "denied", 4),
    ],
)
def test_a_failed_check_starts_nothing_and_says_why(
    env: dict[str, str], standins: Path, case: str, change: dict[str, str], message: str, calls_before: int
) -> None:
    closed = str(free_port("127.0.0.1"))
    change = {k: v.replace("{closed}", closed) for k, v in change.items()}
    if change.pop("STANDIN_NO_DOCKER", None):
        (standins / "docker").unlink()
    result = make(f"deploy-{NODE}", env, **change)
    compose = Path(env["BEV_MANIFEST"]).parent / NODE / "docker-compose.yml"
    assert error_line(result) == message.format(addr=env["BEV_VAULT__ADDR"], closed=closed, compose=compose), case
    assert argvs(env) == CHECKS[:calls_before], case  # stopped at the failed check: nothing built or started


def test_a_stale_or_incomplete_node_folder_stops_before_docker(env: dict[str, str], deploy_dir: Path) -> None:
    secret = deploy_dir / NODE / "secrets" / "postgres_password"
    secret.unlink()
    result = make(f"deploy-{NODE}", env)
    assert "secrets/postgres_password" in error_line(result) and "see the file's header" in error_line(result)
    compose = deploy_dir / NODE / "docker-compose.yml"
    compose.write_text(compose.read_text(encoding="utf-8") + "# hand edit\n", encoding="utf-8")
    result = make(f"deploy-{NODE}", env)
    assert error_line(result) == f"bev: {compose} does not match the manifest: run `make deploy-files` (and commit the result)"
    assert argvs(env) == []


def test_a_container_that_never_becomes_healthy_is_named_with_its_logs(env: dict[str, str]) -> None:
    result = make(f"deploy-{NODE}", env, STANDIN_UNHEALTHY="embeddings,swarm",
                  DEPLOY_FLAGS="--no-build --health-timeout 3")
    compose = Path(env["BEV_MANIFEST"]).parent / NODE / "docker-compose.yml"
    assert error_line(result) == (
        f"bev: not healthy after 3s on {NODE}: embeddings (unhealthy), swarm (unhealthy); see `docker compose -f "
        f"{compose} logs --tail 50 embeddings swarm` (the containers keep running; `make undeploy-{NODE}` stops them)")
    polls = [a for a in argvs(env) if a.endswith("ps --all --format json")]
    assert len(polls) >= 2  # polled until the deadline, not given up at the first look


def test_undeploy_stops_the_node_and_keeps_its_volumes(env: dict[str, str]) -> None:
    result = make(f"undeploy-{NODE}", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert argvs(env) == [*CHECKS[:2], "docker compose -f F down --remove-orphans"]
    assert "its volumes are kept" in result.stdout


def test_an_unknown_node_is_one_line() -> None:
    # No make target for it: `bev deploy up` itself names the manifest's nodes.
    result = subprocess.run([str(Path(sys.executable).parent / "bev"), "deploy", "up", "mars"], cwd=REPO_ROOT,
                            env={"PATH": "/nonexistent", "LANG": "C.UTF-8"}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "bev: unknown node 'mars' (known: thanos, starlord, oracle1)"
