"""`bev deploy up NODE` and `bev deploy down NODE` (`make deploy-<node>`, `make undeploy-<node>`): start or
stop one node's share of the fleet with Docker Compose, run on that node by its operator.

`up` checks, in this order, and stops at the first problem with one line (DeployError) before
anything is built or started: the node's compose file is current and what it mounts is there;
Docker's daemon answers; Compose is v2.24 or later; Tailscale is up and this machine holds the node's
manifest address; the operator's Vault answers and knows the AppRole of each service on the node.
Then it builds and pulls the images, issues a fresh single-use secret id for each service container
(replicas and workers alike) and runs `docker compose up -d` with the role and secret ids in that
one child's environment: compose interpolates them into each container's BEV_VAULT__* variables
(see bev.compose.services), so no id is written to disk. The ids are issued only after the slow
build and pull, because they expire (the role's secret_id_ttl). Last it waits until every
container is healthy and asks the bus which service instances the node runs (`bev status`).

The operator's Vault comes from the usual settings: BEV_VAULT__ADDR (default: the manifest's Vault
over Tailscale), BEV_VAULT__TOKEN (a token that may read the role id of, and issue secret ids for,
each service on the node) and BEV_VAULT__CA_CERT (default: the fleet CA beside the compose file,
tls/ca.crt). The bus: BEV_NATS__* (default: the node's NATS, with the operator user from Vault
secret `nats/operator`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pydantic
import requests
import yaml

from bev.bus import BusUnavailable, connect_nats
from bev.compose.engines import tailnet_url, vault_addr
from bev.compose.files import render_node
from bev.compose.node_file import TLS_DIR
from bev.compose.services import container_names, role_id_variable, secret_id_variable
from bev.engines.vault_seed import APPROLE_MOUNT, role_name
from bev.fleet import Instance, discover
from bev.manifest import Manifest, ManifestError, default_manifest_path, load_manifest
from bev.secrets import SecretsUnavailable, secret_path, vault_errors
from bev.settings import BevSettings, NatsSettings, VaultSettings

# Inline `configs.content` (v2.23.1) and `pull --policy` are the newest Compose features the files use.
MIN_COMPOSE = (2, 24)
HEALTH_POLL_S = 2.0
STATUS_CONNECT_TIMEOUT_S = 5.0
# Never handed to Docker: compose interpolates only what the file names, but the token has no business there.
OPERATOR_SECRETS = ("BEV_VAULT__TOKEN", "VAULT_TOKEN")

Say = Callable[[str], None]


class DeployError(Exception):
    """The node cannot be deployed as asked; str() is one line that says why and what to do."""


@dataclass(frozen=True)
class ContainerState:
    """One compose service's container as `docker compose ps` reports it."""

    name: str
    state: str  # running, restarting, exited, created, ...; "missing" when compose lists none
    health: str  # healthy, unhealthy, starting; "" without a healthcheck
    exit_code: int = 0

    def ready(self, probed: bool) -> bool:
        return self.state == "running" and (self.health == "healthy" or (not probed and not self.health))

    def describe(self) -> str:
        if self.state == "exited":
            return f"exited ({self.exit_code})"
        if self.state != "running":
            return self.state
        return self.health or "running"


@dataclass
class DeployReport:
    """What `up` leaves behind: every container's state, and the bus's view of the node."""

    node: str
    containers: list[ContainerState]
    instances: list[Instance] | None = None  # None: the bus could not be asked (status_error says why)
    missing: list[str] = field(default_factory=list)  # services with fewer instances than replicas
    status_error: str = ""


class NodeDeployment:
    """One node's compose project: deploy/<node>/docker-compose.yml beside the manifest."""

    def __init__(self, node: str, manifest_path: Path | None = None, say: Say = print) -> None:
        path = manifest_path or default_manifest_path()
        try:
            self.manifest: Manifest = load_manifest(path)
        except ManifestError as exc:
            raise DeployError(" ".join(str(exc).split())) from None
        if node not in self.manifest.nodes:
            raise DeployError(f"unknown node '{node}' (known: {', '.join(self.manifest.nodes)})")
        self.node = node
        self.spec = self.manifest.nodes[node]
        self.compose_file = path.parent / node / "docker-compose.yml"
        self.say = say

    # --- checks, in the order `up` runs them ----------------------------------------------------

    def check_compose_file(self) -> dict[str, Any]:
        """The file exists, equals a fresh render, and every file it mounts is there; its document."""
        try:
            text = self.compose_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise DeployError(f"cannot read {self.compose_file}: {exc.strerror or exc}; "
                              "run `make deploy-files`") from None
        if text != render_node(self.manifest, self.node):
            raise DeployError(f"{self.compose_file} does not match the manifest: run `make deploy-files` "
                              "(and commit the result)")
        doc: dict[str, Any] = yaml.safe_load(text)
        missing = [p for p in _operator_files(doc) if not (self.compose_file.parent / p).exists()]
        if missing:
            raise DeployError(f"missing beside {self.compose_file}: {', '.join(missing)} "
                              "(the operator provides them; see the file's header)")
        return doc

    def check_docker(self) -> None:
        result = _run(["docker", "version", "--format", "{{.Server.Version}}"])
        if result.returncode != 0:
            raise DeployError(f"Docker's daemon does not answer: {_first_line(result)}; start it "
                              "(`sudo systemctl start docker`) or add yourself to the docker group")
        self.say(f"docker: engine {result.stdout.strip()}")

    def check_compose(self) -> None:
        result = _run(["docker", "compose", "version"])
        found = re.search(r"version v?(\d+)\.(\d+)\.(\d+)", result.stdout)
        if result.returncode != 0 or found is None:
            raise DeployError(f"Docker Compose v2 is not installed ({_first_line(result)}): install the "
                              "docker-compose-plugin package")
        version = tuple(int(part) for part in found.groups())
        if version[:2] < MIN_COMPOSE:
            raise DeployError(f"Docker Compose v{MIN_COMPOSE[0]}.{MIN_COMPOSE[1]} or later is needed, found "
                              f"{'.'.join(map(str, version))}: install the docker-compose-plugin package")
        self.say(f"compose: v{'.'.join(map(str, version))}")

    def check_tailscale(self) -> None:
        status = _run(["tailscale", "status"])
        if status.returncode != 0:
            raise DeployError(f"Tailscale is not up ({_first_line(status)}): start it (`sudo tailscale up`); "
                              "the node's ports are published on its Tailscale address")
        addresses = _run(["tailscale", "ip"]).stdout.split()
        if self.spec.address not in addresses:
            raise DeployError(f"this machine's Tailscale address is {', '.join(addresses) or 'unknown'}, not "
                              f"{self.spec.address} ({self.node} in deploy/manifest.yaml): run this on {self.node}")
        self.say(f"tailscale: up, {self.spec.address} is this machine")

    def operator_vault(self) -> OperatorVault:
        """The operator's Vault, checked: it answers and gives each service's role id."""
        vault = OperatorVault.from_settings(self)
        services = [s.name for s in self.manifest.services_on(self.node)]
        vault.read_role_ids(services)
        self.say(f"vault: {vault.addr}, role ids of {', '.join(services)}")
        return vault

    # --- docker compose ---------------------------------------------------------------------------

    def compose(self, *args: str) -> list[str]:
        return ["docker", "compose", "-f", str(self.compose_file), *args]

    def stream(self, *args: str, env: dict[str, str] | None = None) -> None:
        """Run `docker compose <args>` with its output on the operator's terminal."""
        argv = self.compose(*args)
        result = subprocess.run(argv, env=_child_env(env), check=False)
        if result.returncode != 0:
            shown = " ".join(argv[:2] + argv[4:])  # without the file's path
            raise DeployError(f"`{shown}` failed (exit {result.returncode}); its output is above")

    def states(self) -> dict[str, ContainerState]:
        result = _run(self.compose("ps", "--all", "--format", "json"))
        if result.returncode != 0:
            raise DeployError(f"`docker compose ps` failed: {_first_line(result)}")
        return {state.name: state for state in _parse_ps(result.stdout)}

    def wait_healthy(self, doc: dict[str, Any], timeout_s: float) -> list[ContainerState]:
        """Poll until every container runs and passes its healthcheck; DeployError naming the others."""
        probed = {name: not (spec.get("healthcheck") or {}).get("disable", False)
                  for name, spec in doc["services"].items()}
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            current = [states.get(name, ContainerState(name, "missing", "")) for name in probed]
            waiting = [s for s in current if not s.ready(probed[s.name])]
            if not waiting:
                return current
            if time.monotonic() >= deadline:
                names = " ".join(s.name for s in waiting)
                raise DeployError(
                    f"not healthy after {timeout_s:g}s on {self.node}: "
                    + ", ".join(f"{s.name} ({s.describe()})" for s in waiting)
                    + f"; see `docker compose -f {self.compose_file} logs --tail 50 {names}`"
                    " (the containers keep running; `make undeploy-" + self.node + "` stops them)")
            time.sleep(min(HEALTH_POLL_S, max(0.0, deadline - time.monotonic())))

    # --- the commands -----------------------------------------------------------------------------

    def up(self, *, build: bool = True, health_timeout_s: float = 600.0) -> DeployReport:
        doc = self.check_compose_file()
        self.check_docker()
        self.check_compose()
        self.check_tailscale()
        vault = self.operator_vault()
        if build:
            self.say("building the BEV images")
            self.stream("build")
        self.say("pulling the engines' images")
        self.stream("pull", "--ignore-buildable", "--policy", "missing")
        services = self.manifest.services_on(self.node)
        containers = {c: s.name for s in services for c in container_names(s, self.node)}
        env = vault.approle_env(containers, self.node)
        self.say(f"issued {len(containers)} single-use secret ids; starting bev-{self.node}")
        self.stream("up", "--detach", "--no-build", "--remove-orphans", env=env)
        self.say(f"waiting up to {health_timeout_s:g}s for every container to be healthy")
        report = DeployReport(self.node, self.wait_healthy(doc, health_timeout_s))
        self.say(f"healthy: all {len(report.containers)} containers of bev-{self.node}")
        try:
            report.instances = asyncio.run(self._instances(vault))
        except DeployError as exc:
            report.status_error = str(exc)
        else:
            found = [i.service for i in report.instances]
            report.missing = [s.name for s in services if found.count(s.name) < s.replicas]
        return report

    def down(self) -> None:
        if not self.compose_file.is_file():
            raise DeployError(f"no {self.compose_file}: run `make deploy-files`")
        self.check_docker()
        self.check_compose()
        self.stream("down", "--remove-orphans")
        self.say(f"stopped bev-{self.node}; its volumes are kept "
                 f"(`docker compose -f {self.compose_file} down --volumes` deletes them)")

    async def _instances(self, vault: OperatorVault) -> list[Instance]:
        """This node's service instances on the bus, as `bev status` lists them."""
        settings = self.nats_settings(vault)
        try:
            nc = await connect_nats(settings, "bev-deploy")
        except BusUnavailable as exc:
            raise DeployError(str(exc)) from None
        try:
            return [i for i in await discover(nc, 1.0) if i.node == self.node]
        finally:
            await nc.close()

    def nats_settings(self, vault: OperatorVault) -> NatsSettings:
        settings = _bev_settings().nats.model_copy(update={"connect_timeout_s": STATUS_CONNECT_TIMEOUT_S})
        if "BEV_NATS__URL" not in os.environ:
            settings.url = tailnet_url(self.manifest, "nats", self.node)
        if not settings.user:
            operator = vault.read_secret("nats/operator", "set BEV_NATS__USER and BEV_NATS__PASSWORD")
            settings.user, settings.password = operator.get("user", ""), operator.get("password", "")
        return settings


class OperatorVault:
    """The operator's session with Vault: role ids and fresh secret ids of the node's services."""

    def __init__(self, deployment: NodeDeployment, settings: VaultSettings, addr: str,
                 verify: bool | str) -> None:
        self.deployment = deployment
        self.settings = settings
        self.addr = addr
        # token set explicitly: hvac would otherwise fall back to VAULT_TOKEN or ~/.vault-token.
        self.client: Any = hvac.Client(url=addr, token=settings.token, timeout=settings.timeout_s, verify=verify)
        self.role_ids: dict[str, str] = {}

    @classmethod
    def from_settings(cls, deployment: NodeDeployment) -> OperatorVault:
        settings = _bev_settings().vault
        if "BEV_VAULT__ADDR" in os.environ:
            addr = settings.addr
        else:
            addr = vault_addr(deployment.manifest, deployment.node)
        if not settings.token:
            raise DeployError(f"no Vault token: set BEV_VAULT__TOKEN to an operator token for {addr} "
                              "(and BEV_VAULT__ADDR if Vault is elsewhere)")
        fleet_ca = deployment.compose_file.parent / TLS_DIR / "ca.crt"
        verify: bool | str = settings.ca_cert or (str(fleet_ca) if fleet_ca.is_file() else True)
        return cls(deployment, settings, addr, verify)

    def _fail(self, exc: Exception) -> DeployError:
        message = str(exc)
        hosts = self.deployment.manifest.engines.get("vault")
        down = isinstance(exc.__cause__, requests.exceptions.RequestException | hvac.exceptions.VaultDown)
        if down and hosts is not None and self.deployment.node in hosts.nodes:
            message += (f"; {self.deployment.node} runs Vault itself: start and unseal it first (`docker compose "
                        f"-f {self.deployment.compose_file} up -d vault`, then `vault operator unseal`)")
        return DeployError(message)

    def read_role_ids(self, services: list[str]) -> None:
        for service in services:
            try:
                with vault_errors(self.addr, f"Vault: reading the role id of service '{service}' (AppRole "
                                  f"{role_name(service)}) failed"):
                    response = self.client.auth.approle.read_role_id(role_name=role_name(service),
                                                                     mount_point=APPROLE_MOUNT)
            except SecretsUnavailable as exc:
                raise self._fail(exc) from None
            self.role_ids[service] = str(response["data"]["role_id"])

    def approle_env(self, containers: dict[str, str], node: str) -> dict[str, str]:
        """{variable: value} for compose: each service's role id and one new secret id per container."""
        env = {role_id_variable(s): role_id for s, role_id in self.role_ids.items()}
        for container, service in containers.items():
            try:
                with vault_errors(self.addr, f"Vault: issuing a secret id for container '{container}' failed"):
                    response = self.client.auth.approle.generate_secret_id(
                        role_name=role_name(service), mount_point=APPROLE_MOUNT,
                        # Shown when the operator lists the role's secret ids: who asked, for what.
                        metadata={"issued_by": "bev deploy up", "node": node, "container": container})
            except SecretsUnavailable as exc:
                raise self._fail(exc) from None
            env[secret_id_variable(container)] = str(response["data"]["secret_id"])
        return env

    def read_secret(self, name: str, otherwise: str) -> dict[str, str]:
        try:
            failure = f"Vault: reading secret '{self.settings.mount}/{secret_path(name)}' failed"
            with vault_errors(self.addr, failure):
                response = self.client.secrets.kv.v2.read_secret_version(
                    path=secret_path(name), mount_point=self.settings.mount, raise_on_deleted_version=True)
        except SecretsUnavailable as exc:
            raise DeployError(f"{exc}; {otherwise}") from None
        return {str(k): str(v) for k, v in response["data"]["data"].items()}


def _bev_settings() -> BevSettings:
    try:
        return BevSettings()
    except pydantic.ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise DeployError(f"bad BEV_* settings: {problems}") from None


def _operator_files(doc: dict[str, Any]) -> list[str]:
    """Paths (relative to the compose file) the operator must provide: Docker secrets and the bind
    mounts compose may not create."""
    paths = [str(secret["file"]).removeprefix("./") for secret in (doc.get("secrets") or {}).values()]
    for spec in doc["services"].values():
        for volume in spec.get("volumes", []):
            if isinstance(volume, dict) and volume.get("type") == "bind" and \
                    not volume.get("bind", {}).get("create_host_path", True):
                paths.append(str(volume["source"]).removeprefix("./"))
    return list(dict.fromkeys(paths))


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OPERATOR_SECRETS}
    return {**env, **(extra or {})}


def _run(argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a short command, capturing its output; a missing program or a hang is a DeployError."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=_child_env(),
                              check=False)
    except FileNotFoundError:
        hint = {"docker": "install Docker Engine (https://docs.docker.com/engine/install/)",
                "tailscale": "install Tailscale (https://tailscale.com/download/linux)"}.get(argv[0], "install it")
        raise DeployError(f"{argv[0]} not found on PATH: {hint}") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"`{' '.join(argv)}` did not finish within {timeout_s:g}s") from None


def _first_line(result: subprocess.CompletedProcess[str]) -> str:
    for line in (result.stderr + "\n" + result.stdout).splitlines():
        if line.strip():
            return line.strip()
    return f"exit {result.returncode}"


def _parse_ps(text: str) -> list[ContainerState]:
    """`docker compose ps --format json`: one JSON object per line (Compose 2.21+), or one array."""
    text = text.strip()
    if not text:
        return []
    try:
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DeployError(f"`docker compose ps --format json` printed something else: {exc}") from None
    return [ContainerState(str(row.get("Service", "")), str(row.get("State", "")), str(row.get("Health", "")),
                           int(row.get("ExitCode") or 0)) for row in rows]
