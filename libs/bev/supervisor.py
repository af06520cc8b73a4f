"""The one-machine fleet (`make run` = `bev up`): embedded engines, then every service, supervised.

Order: OpenBao (seeded with every secret and one AppRole per service) -> NATS with JetStream ->
PostgreSQL+pgvector -> Redis -> FalkorDB -> Alertmanager -> Prometheus (scraping every process it
is told of in prometheus/targets/), each health-checked before the next; then each
service as `python -m services.<name>` with its own single-use secret id, and a wait until
every one answers Health over NATS. A child that exits is restarted with exponential backoff
and reported on `bev.events.fleet.*`. SIGINT/SIGTERM stops services, then engines in reverse.
The manifest (deploy/manifest.yaml) says which services and engines run and on which ports.

`bev up --node N --cluster FILE` runs one node of a multi-node fleet the same way (bev.cluster: the
other nodes' addresses, the shared NATS credentials, TLS): engines and services on the node's
address, NATS one server of the cluster, and on a node without Vault the services' secret ids minted
with the node's token. `bev lab up` runs three such nodes as network namespaces (bev.lab).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bev.bus import connect_nats
from bev.cluster import ClusterSpec
from bev.engines import (
    Engine,
    EngineStartError,
    FalkorDB,
    NatsCluster,
    NatsServer,
    NatsTls,
    NatsUser,
    OpenBao,
    Postgres,
    Redis,
    free_port,
    new_secret_id,
    seed_fleet,
)
from bev.engines._base import client_host, open_private_log, port_in_use
from bev.engines.prometheus import Alertmanager, Prometheus
from bev.engines.vault_seed import read_role_id
from bev.fleet import discover
from bev.manifest import Manifest, ServiceSpec, WorkerSpec
from bev.secrets import SecretsUnavailable
from bev.settings import BevSettings, NatsSettings
from bev.telemetry import get_logger

log = get_logger("bev.supervisor")

ENGINE_ORDER = ("vault", "nats", "postgres", "redis", "falkordb", "alertmanager", "prometheus")
ENGINE_PORT_SPAN = {"vault": 2}  # ports an engine binds from its own: OpenBao's API and cluster listener
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long gets its backoff reset
RESPAWN_RETRY_MAX_S = 5.0  # a blocked restart (Vault down) is retried at least this often
ENGINE_POLL_S = 0.5  # how soon a dead engine is noticed
ENGINE_FIRST_BACKOFF_S = 0.5  # first restart attempt after this, doubling up to MAX_BACKOFF_S
ENGINE_MAX_ATTEMPTS = 10  # consecutive failed starts before the supervisor gives up on an engine
EVENT_PUBLISH_TIMEOUT_S = 2.0
FLEET_FILE = "run/fleet.json"
RESTART_SUBJECT = "bev.supervisor.{node}.restart"  # monitoring's self-healing asks here


class FleetStartError(Exception):
    """The fleet could not come up; str() is one line for the operator."""


@dataclass
class FleetPlan:
    """Everything the supervisor decided before starting anything: ports, nodes, services."""

    manifest: Manifest  # what each service is: its calls and secrets become NATS users and AppRoles
    data_dir: Path
    node: str  # manifest node name, or "local" for the whole fleet on one machine
    engine_ports: dict[str, int]
    services: list[ServiceSpec]
    # Ports of each service process: by service name, or `<service>-<n>` when the manifest asks
    # for several replicas per node (ServiceSpec.replica_names; replica k at port + 100*k).
    service_ports: dict[str, dict[str, int]]
    nats_monitor_port: int = 0
    # Non-RPC processes of the planned services (Celery worker and beat), as (service, worker).
    workers: list[tuple[ServiceSpec, WorkerSpec]] = field(default_factory=list)
    worker_metrics_ports: dict[str, int] = field(default_factory=dict)  # "<service>-<worker>" -> port
    # One node of a multi-node fleet (`bev up --node N --cluster FILE`): the other nodes' addresses,
    # the shared NATS credentials, TLS. None: everything the plan names runs on this machine.
    cluster: ClusterSpec | None = None

    @property
    def host(self) -> str:
        """The address engines and services listen on: the node's own on a multi-node fleet."""
        return self.cluster.address if self.cluster is not None else "127.0.0.1"

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, data_dir: Path, node: str | None = None, free_ports: bool = False,
        only: list[str] | None = None, cluster: ClusterSpec | None = None,
    ) -> FleetPlan:
        if cluster is not None and cluster.node != node:
            raise FleetStartError(f"the cluster file is node {cluster.node!r}'s; run it with --node {cluster.node}")
        if cluster is not None:  # every NATS server of the cluster must know every service's user alike
            missing = sorted(set(manifest.service_names()) - set(cluster.nats_service_passwords))
            if missing:
                raise FleetStartError(f"the cluster file has no NATS password for {', '.join(missing)}")
        # --free-ports: each pick is free now, but two picks may land on the same port (one fleet has
        # ~30); a port the plan already holds is picked again (CI saw Redis and a /metrics collide).
        # `span` ports from the pick are held: OpenBao also binds its port + 1 (raft's cluster
        # listener; CI saw it take the embeddings service's /metrics port).
        taken: set[int] = set()

        def pick(fixed: int, span: int = 1) -> int:
            if not free_ports:
                return fixed
            while True:
                port = free_port()
                held = set(range(port, port + span))
                if held & taken or any(port_in_use("127.0.0.1", p) for p in held):
                    continue
                taken.update(held)
                return port

        services = [s for s in manifest.services_on(node) if only is None or s.name in only]
        # Only the engines the planned services use (NATS and Vault always: the supervisor needs both).
        used = {"nats", "vault"}.union(*(s.engines for s in services))
        engines = {e.name: e for e in manifest.engines_on(node) if e.name in used}
        engine_ports = {name: pick(engines[name].port, ENGINE_PORT_SPAN.get(name, 1))
                        for name in ENGINE_ORDER if name in engines}
        service_ports = {name: {role: pick(port) for role, port in s.replica_ports(k).items()}
                         for s in services for k, name in enumerate(s.replica_names())}
        workers = [(s, w) for s in services for w in s.workers_on(node)]
        worker_metrics_ports = {
            f"{s.name}-{w.name}": pick(w.metrics_port) for s, w in workers if w.metrics_port is not None
        }
        return cls(manifest, data_dir.absolute(), node or "local", engine_ports, services, service_ports,
                   nats_monitor_port=pick(8222), workers=workers, worker_metrics_ports=worker_metrics_ports,
                   cluster=cluster)


@dataclass
class Child:
    """A supervised service (or service worker) process."""

    spec: ServiceSpec
    env: dict[str, str]
    log_path: Path
    module: str  # what `python -m` runs: services.<name>, or one of its workers
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, plan: FleetPlan, settings: BevSettings, health_timeout_s: float = 180.0) -> None:
        self.plan = plan
        self.settings = settings
        self.health_timeout_s = health_timeout_s
        self.log_dir = plan.data_dir / "logs"
        self.engines: dict[str, Engine] = {}
        self.children: dict[str, Child] = {}
        self.workers: dict[str, Child] = {}  # "<service>-<worker>" -> process
        self.nc: NatsClient | None = None
        self.stopping = False
        self._nats_user = "bev"  # the supervisor's and operator's user: not limited
        cluster = plan.cluster
        # On a multi-node fleet every NATS server authorises the same users: their passwords come from
        # the cluster file, and every service's (not only this node's) is in this node's server.
        self._nats_password = cluster.nats_operator_password if cluster else secrets.token_urlsafe(24)
        self._service_nats_passwords: dict[str, str] = dict(cluster.nats_service_passwords) if cluster else {}
        self._engine_watchers: list[asyncio.Task[None]] = []

    # --- engines -------------------------------------------------------------------------------

    def _make_engine(self, name: str, port: int) -> Engine:
        d, host = self.plan.data_dir, self.plan.host
        match name:
            case "vault":
                return OpenBao(d / "openbao", port, host)
            case "nats":
                return NatsServer(d / "nats", port, host, user=self._nats_user, password=self._nats_password,
                                  monitor_port=self.plan.nats_monitor_port, users=self._service_nats_users(),
                                  **self._nats_cluster_options())
            case "postgres":
                return Postgres(d / "postgres", port, host)
            case "redis":
                return Redis(d / "redis", port, host, password=self._stable_secret("redis"))
            case "falkordb":
                return FalkorDB(d / "falkordb", port, host, password=self._stable_secret("falkordb"))
            case "alertmanager":
                return Alertmanager(d / "alertmanager", port, host,
                                    config_file=self._monitoring_config("alertmanager.yml"))
            case "prometheus":
                am = self.engines.get("alertmanager")
                metrics = self.settings.prometheus
                return Prometheus(d / "prometheus", port, host, rule_files=[self._monitoring_config("rules", "*.yml")],
                                  alertmanager=am.address if isinstance(am, Alertmanager) else "",
                                  scrape_interval_s=metrics.scrape_interval_s,
                                  evaluation_interval_s=metrics.evaluation_interval_s)
        raise FleetStartError(f"no embedded engine for {name!r}")

    def _nats_services(self) -> list[str]:
        """Whose NATS users this node's server holds (and whose AppRoles its Vault seeds): on a
        multi-node fleet every service's, since a client may connect to any server of the cluster."""
        if self.plan.cluster is not None:
            return list(self.plan.manifest.service_names())
        return [spec.name for spec in self.plan.services]

    def _service_nats_users(self) -> list[NatsUser]:
        """One NATS user per service, limited to its subjects; passwords new at each start (from the
        cluster file on a multi-node fleet)."""
        return [
            NatsUser(f"bev-{name}", self._service_nats_passwords.setdefault(name, secrets.token_urlsafe(24)),
                     self.plan.manifest.nats_permissions(name))
            for name in self._nats_services()
        ]

    def _nats_cluster_options(self) -> dict[str, Any]:
        """NatsServer options of one node of the NATS cluster: routes to every NATS node (its own
        address included; nats-server skips itself), TLS on clients and routes with certificates
        required, fsync on every JetStream write as in production. Nothing on one machine."""
        cluster = self.plan.cluster
        if cluster is None:
            return {}
        tls = NatsTls(cluster.tls.ca_file, cluster.tls.cert_file, cluster.tls.key_file)
        routes = [f"{cluster.addresses[n]}:{cluster.nats_cluster_port}"
                  for n in self.plan.manifest.engines["nats"].nodes]
        return {"server_name": cluster.node, "tls": tls, "sync_always": True,
                "cluster": NatsCluster(name="bev", port=cluster.nats_cluster_port, routes=routes,
                                       user="bev-route", password=cluster.nats_route_password, tls=tls)}

    def _nats_settings(self) -> NatsSettings:
        """How this node's processes reach its NATS server (with the node's client certificate)."""
        settings = NatsSettings(url=self.nats.url)
        cluster = self.plan.cluster
        if cluster is not None:
            settings = settings.model_copy(update={"tls_ca_file": str(cluster.tls.ca_file),
                                                   "tls_cert_file": str(cluster.tls.cert_file),
                                                   "tls_key_file": str(cluster.tls.key_file)})
        return settings

    @property
    def vault(self) -> OpenBao:
        engine = self.engines["vault"]
        assert isinstance(engine, OpenBao)
        return engine

    @property
    def vault_addr(self) -> str:
        """Vault: this node's OpenBao, or on a multi-node fleet's other nodes the Vault node's."""
        if "vault" in self.engines or self.plan.cluster is None:
            return self.vault.addr
        return self.plan.cluster.vault_addr

    @property
    def vault_token(self) -> str:
        """The token this supervisor mints secret ids with: the local OpenBao's root token, or on a
        node without Vault the node token the operator gave it (BEV_VAULT__TOKEN; node_policy)."""
        if "vault" in self.engines or self.plan.cluster is None:
            return self.vault.root_token
        if not self.settings.vault.token:
            raise FleetStartError(f"node {self.plan.node!r} runs no Vault: set BEV_VAULT__TOKEN to its node token "
                                  f"(it mints the node's services' secret ids at {self.vault_addr})")
        return self.settings.vault.token

    @property
    def nats(self) -> NatsServer:
        engine = self.engines["nats"]
        assert isinstance(engine, NatsServer)
        return engine

    def _monitoring_config(self, *parts: str) -> Path:
        """A file of the monitoring node's deploy folder (deploy/oracle1/): the same alert rules and
        Alertmanager config ORACLE1 mounts."""
        node = self.plan.manifest.engines["prometheus"].nodes[0]
        return _repo_root() / "deploy" / node / Path(*parts)

    def _stable_secret(self, name: str) -> str:
        """A password that survives restarts of the same data dir (the data it guards does too)."""
        path = self.plan.data_dir / "run" / f"{name}.password"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        value = secrets.token_urlsafe(24)
        path.write_text(value + "\n")
        return value

    def _fleet_secrets(self) -> dict[str, dict[str, str]]:
        """Every secret the planned services read, by the names the manifest gives them."""
        manifest = self.plan.manifest
        out: dict[str, dict[str, str]] = {}
        for service in self._nats_services():
            password = self._service_nats_passwords[service]
            out[manifest.services[service].nats_secret()] = {"user": f"bev-{service}", "password": password}
        for name, engine in self.engines.items():
            secret = manifest.engines[name].secret
            if not secret:
                continue
            if isinstance(engine, Postgres):
                out[secret] = {"dsn": engine.dsn}
            elif isinstance(engine, FalkorDB):  # before Redis: FalkorDB is a Redis subclass
                out[secret] = {"host": engine.host, "port": str(engine.port), "password": engine.password}
            elif isinstance(engine, Redis):
                out[secret] = {"url": engine.url}
        if "gateway" in self._nats_services():
            # The pepper API keys are stored under, and the admin key `bev` and the quick start use
            # (run/fleet.json's api_key); both survive restarts of the same data dir, as the keys do.
            out["gateway"] = {"pepper": self._stable_secret("gateway-pepper"), "bootstrap_key": self.api_key}
        return out

    @property
    def api_key(self) -> str:
        """The embedded fleet's bootstrap admin key (bev_bootstrap_<secret>)."""
        from bev.access.keys import BOOTSTRAP_ID, PREFIX

        return f"{PREFIX}{BOOTSTRAP_ID}_{self._stable_secret('api-key')}"

    async def start_engines(self) -> None:
        needed = ("nats",) if self.plan.cluster is not None else ("vault", "nats")
        missing = [name for name in needed if name not in self.plan.engine_ports]
        if missing:
            raise FleetStartError(
                f"the manifest places no {' or '.join(missing)} on node {self.plan.node!r}; the one-machine "
                "supervisor needs both locally (run the whole fleet, or that node's compose file)")
        self.engines = {}
        for name, port in self.plan.engine_ports.items():  # in order: Prometheus needs Alertmanager's address
            self.engines[name] = self._make_engine(name, port)
        prometheus = self.engines.get("prometheus")
        if isinstance(prometheus, Prometheus):  # before it starts: its first discovery sees them
            prometheus.write_targets("fleet", self.scrape_targets())
        for name, engine in self.engines.items():
            began = time.monotonic()
            await asyncio.to_thread(engine.start, 60)
            log.info("engine up", engine=name, port=engine.port, seconds=round(time.monotonic() - began, 2))

    def scrape_targets(self) -> list[dict[str, Any]]:
        """Every planned process with a /metrics (services, workers, Prometheus, Alertmanager), labelled
        as on ORACLE1: job = the service, node, and for BEV processes process = the supervised child's
        name (deploy/oracle1/rules/ tell services from engines by it). A process that
        is down stays listed: its failed scrapes (`up == 0`) are how monitoring sees it is down."""
        cluster = self.plan.cluster
        if cluster is None:
            groups = _process_targets(self.plan, client_host(self.settings.telemetry.metrics_host))
        else:  # Prometheus on the monitoring node scrapes every node's processes, at the manifest's ports
            groups = [group for node in self.plan.manifest.nodes for group in _process_targets(
                FleetPlan.from_manifest(self.plan.manifest, self.plan.data_dir, node), cluster.addresses[node])]
        node = self.plan.node
        for name, engine in self.engines.items():
            if isinstance(engine, (Prometheus, Alertmanager)):
                # No `process` label: the rules tell engines (EngineDown) from services (ServiceDown) by it.
                groups.append({"targets": [f"{client_host(engine.host)}:{engine.port}"],
                               "labels": {"job": name, "node": node}})
        return groups

    # --- restarts monitoring asks for ----------------------------------------------------------

    async def _serve_restarts(self) -> None:
        assert self.nc is not None
        await self.nc.subscribe(RESTART_SUBJECT.format(node=self.plan.node), cb=self._on_restart_request)

    async def _on_restart_request(self, msg: Msg) -> None:
        """{"process": "<service>" or "<service>-<worker>", "reason": ..., "by": ...}: SIGKILL that child's
        process group (a frozen process too: SIGKILL needs no cooperation); the supervision loop then
        starts it again as after any exit. Answers {"ok", "pid" (the killed one), "error"}."""
        try:
            request = json.loads(msg.data)
            name, reason, by = str(request["process"]), str(request.get("reason", "")), str(request.get("by", ""))
        except (ValueError, KeyError, TypeError):
            await msg.respond(json.dumps({"ok": False, "error": 'expected JSON {"process": ..., "reason": ...}'}).encode())
            return
        child = self.children.get(name) or self.workers.get(name)
        if child is None:
            known = ", ".join(sorted([*self.children, *self.workers]))
            await msg.respond(json.dumps({"ok": False, "error": f"no process {name!r} on node "
                                                                f"{self.plan.node!r} (known: {known})"}).encode())
            return
        process = child.process
        pid = process.pid if process is not None and process.returncode is None else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
                os.killpg(pid, signal.SIGKILL)
        log.warning("restart requested", process=name, pid=pid, reason=reason, by=by)
        await self._event("fleet.service_restart_requested", {"service": child.spec.name, "process": name,
                                                              "pid": pid, "reason": reason, "by": by})
        await msg.respond(json.dumps({"ok": True, "pid": pid, "error": ""}).encode())

    # --- services ------------------------------------------------------------------------------

    def _service_env(self, spec: ServiceSpec, role_id: str, secret_id: str, process: str = "") -> dict[str, str]:
        ports = self.plan.service_ports[process or spec.name]
        env = {
            **os.environ,
            **spec.env,
            "BEV_NODE": self.plan.node,
            "BEV_DATA_DIR": str(self.plan.data_dir),
            "BEV_NATS__URL": self.nats.url,
            "BEV_VAULT__ADDR": self.vault_addr,
            "BEV_VAULT__ROLE_ID": role_id,
            "BEV_VAULT__SECRET_ID": secret_id,
            "BEV_RPC__GRPC_PORT": str(ports["grpc"]),
            "BEV_TELEMETRY__METRICS_PORT": str(ports["metrics"]),
            "PYTHONUNBUFFERED": "1",
        }
        if "http" in ports:
            env[f"BEV_{spec.name.upper()}__PORT"] = str(ports["http"])
        if self.plan.cluster is not None:
            # Reachable from the other nodes (Prometheus on the monitoring node, gRPC clients, analysts),
            # and the node's client certificate for its NATS server.
            host = self.plan.host
            env.update({"BEV_TELEMETRY__METRICS_HOST": host, "BEV_RPC__GRPC_HOST": host})
            if "http" in ports:
                env[f"BEV_{spec.name.upper()}__HOST"] = host
            nats = self._nats_settings()
            env.update({"BEV_NATS__TLS_CA_FILE": nats.tls_ca_file, "BEV_NATS__TLS_CERT_FILE": nats.tls_cert_file,
                        "BEV_NATS__TLS_KEY_FILE": nats.tls_key_file})
        for name in spec.engines:  # monitoring: where Prometheus and Alertmanager answer
            engine = self.engines.get(name)
            if isinstance(engine, (Prometheus, Alertmanager)):
                env[f"BEV_{spec.name.upper()}__{name.upper()}_URL"] = engine.url
        env.pop("BEV_VAULT__TOKEN", None)  # services log in with their AppRole only
        return env

    async def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open_private_log(child.log_path) as out:
            child.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", child.module,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=child.env, cwd=str(_repo_root()), start_new_session=True,
            )
        child.started = time.monotonic()

    async def _start_child(self, child: Child) -> None:
        await self._spawn(child)
        child.watcher = _logged_task(self._supervise(child), f"supervising {child.module}")

    async def start_services(self) -> None:
        names = [s.name for s in self.plan.services]
        if "vault" in self.engines:
            seeded = self._nats_services()
            creds = await asyncio.to_thread(
                seed_fleet, self.vault.addr, self.vault.root_token, seeded, self._fleet_secrets(),
                {n: self.plan.manifest.secrets_of(n) for n in seeded}, issue=names,
            )
        else:
            creds = {name: await self._credentials_from_vault(name) for name in names}
        for spec in self.plan.services:
            role_id, secret_id = creds[spec.name]
            for replica, name in enumerate(spec.replica_names()):
                if replica:  # each replica logs in with a single-use secret id of its own
                    secret_id = await asyncio.to_thread(new_secret_id, self.vault_addr, self.vault_token, spec.name)
                child = Child(spec, self._service_env(spec, role_id, secret_id, name), self.log_dir / f"{name}.log",
                              module=f"services.{spec.name}")
                self.children[name] = child
                await self._start_child(child)
        for spec, worker in self.plan.workers:
            name = f"{spec.name}-{worker.name}"
            secret_id = await asyncio.to_thread(new_secret_id, self.vault_addr, self.vault_token, spec.name)
            role_id = creds[spec.name][0]
            env = self._service_env(spec, role_id, secret_id)
            env["BEV_TELEMETRY__METRICS_PORT"] = str(self.plan.worker_metrics_ports.get(name, 0))
            child = Child(spec, env, self.log_dir / f"{name}.log", module=worker.module(spec.name))
            self.workers[name] = child
            await self._start_child(child)

    async def _credentials_from_vault(self, service: str) -> tuple[str, str]:
        """A node without Vault: the service's role id and a fresh secret id, minted with the node
        token. The Vault node seeds the AppRoles when it starts: until then, wait for them."""
        deadline = time.monotonic() + self.health_timeout_s
        while True:
            try:
                role_id = await asyncio.to_thread(read_role_id, self.vault_addr, self.vault_token, service)
                return role_id, await asyncio.to_thread(new_secret_id, self.vault_addr, self.vault_token, service)
            except SecretsUnavailable as exc:
                if time.monotonic() > deadline:
                    raise FleetStartError(f"no credentials for {service} from Vault within "
                                          f"{self.health_timeout_s:.0f}s: {exc}") from None
                log.info("waiting for Vault to hold the service's AppRole", service=service, error=str(exc))
                await asyncio.sleep(1.0)

    async def _supervise(self, child: Child) -> None:
        """For the fleet's whole life: wait for the child to exit, then start it again with backoff."""
        while not self.stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self.stopping:
                return
            ran = time.monotonic() - child.started
            if ran > STABLE_AFTER_S:
                child.restarts = 0
            delay = min(MAX_BACKOFF_S, 2.0 ** child.restarts)
            child.restarts += 1
            tail = _tail(child.log_path)
            log.error("service exited; restarting", process=child.module, code=code, ran_s=round(ran, 1),
                      restart_in_s=delay, last_log=tail)
            await self._event("fleet.service_exited", {"service": child.spec.name, "process": child.module,
                                                        "code": code, "restart_in_s": delay,
                                                        "restarts": child.restarts, "last_log": tail})
            await asyncio.sleep(delay)
            await self._respawn(child)

    async def _respawn(self, child: Child) -> None:
        """A fresh single-use secret id, then the process. Either can fail (Vault down, no memory):
        each failure is logged and published, and retried with backoff until it works or the fleet stops."""
        attempt = 0
        while not self.stopping:
            try:
                child.env["BEV_VAULT__SECRET_ID"] = await asyncio.to_thread(
                    new_secret_id, self.vault_addr, self.vault_token, child.spec.name)
                await self._spawn(child)
            except (SecretsUnavailable, OSError) as exc:
                attempt += 1
                delay = min(RESPAWN_RETRY_MAX_S, 0.5 * 2.0 ** attempt)
                log.error("service restart failed; retrying", process=child.module, attempt=attempt,
                          retry_in_s=delay, error=str(exc))
                await self._event("fleet.service_restart_failed", {"service": child.spec.name,
                                                                    "process": child.module, "attempt": attempt,
                                                                    "retry_in_s": delay, "error": str(exc)})
                await asyncio.sleep(delay)
                continue
            log.info("service restarted", process=child.module, pid=child.process.pid if child.process else None)
            self._write_fleet_file()  # its new pid
            return

    # --- engines, supervised -------------------------------------------------------------------

    async def _supervise_engine(self, name: str) -> None:
        """For the fleet's whole life: notice the engine's exit within ENGINE_POLL_S, then start it again."""
        engine = self.engines[name]
        while not self.stopping:
            await asyncio.sleep(ENGINE_POLL_S)
            code = engine.exit_code()
            if code is None or self.stopping:
                continue
            died = time.monotonic()
            tail = engine.log_tail()
            log.error("engine exited; restarting", engine=name, code=code, last_log=tail)
            await self._event("fleet.engine_exited", {"engine": name, "code": code, "last_log": tail})
            await self._restart_engine(name, died)

    async def _restart_engine(self, name: str, died: float) -> None:
        engine = self.engines[name]
        for attempt in range(1, ENGINE_MAX_ATTEMPTS + 1):
            await asyncio.sleep(min(MAX_BACKOFF_S, ENGINE_FIRST_BACKOFF_S * 2.0 ** (attempt - 1)))
            if self.stopping:
                return
            try:
                await asyncio.to_thread(engine.start, 60)
            except EngineStartError as exc:
                log.error("engine restart failed", engine=name, attempt=attempt, error=str(exc))
                await self._event("fleet.engine_restart_failed", {"engine": name, "attempt": attempt,
                                                                   "error": str(exc)})
                continue
            down_s = round(time.monotonic() - died, 2)
            log.info("engine restarted", engine=name, attempt=attempt, down_s=down_s, pid=engine.pid)
            self._write_fleet_file()  # its new pid
            await self._event("fleet.engine_restarted", {"engine": name, "attempt": attempt, "down_s": down_s})
            return
        log.error("engine restart given up", engine=name, attempts=ENGINE_MAX_ATTEMPTS)
        await self._event("fleet.engine_gave_up", {"engine": name, "attempts": ENGINE_MAX_ATTEMPTS})

    async def _event(self, kind: str, data: dict[str, Any]) -> None:
        """Publish a fleet event on JetStream. With NATS itself down it cannot be published: the
        log line the caller wrote is then the record, and this says so."""
        if self.nc is None or self.nc.is_closed:
            return
        if not self.nc.is_connected:  # nats-py would buffer it and wait for a reconnection
            log.warning("fleet event not published (NATS unavailable)", kind=kind)
            return
        payload = json.dumps({"kind": kind, "time": time.time(), "node": self.plan.node, **data}).encode()
        try:
            await asyncio.wait_for(self.nc.jetstream().publish(f"bev.events.{kind}", payload),
                                   EVENT_PUBLISH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("fleet event not published (NATS unavailable)", kind=kind, error=f"{type(exc).__name__}: {exc}")

    async def wait_healthy(self) -> list[Any]:
        """Wait until every planned service answers Health as serving; raise with who is missing."""
        deadline = time.monotonic() + self.health_timeout_s
        expected = {s.name: s.replicas for s in self.plan.services}
        assert self.nc is not None
        while True:
            instances = await discover(self.nc, 0.5)
            # On a multi-node fleet: this node's instances (another node's replica does not count).
            serving = Counter(i.service for i in instances if i.state == "serving"
                              and (self.plan.cluster is None or i.node == self.plan.node))
            short = sorted(name for name, replicas in expected.items() if serving[name] < replicas)
            if not short:
                return instances
            if time.monotonic() > deadline:
                missing = ", ".join(short)
                raise FleetStartError(
                    f"not healthy within {self.health_timeout_s:.0f}s: {missing} (see {self.log_dir}/<service>.log)")
            await asyncio.sleep(0.5)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, ready: asyncio.Event | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        began = time.monotonic()
        # Private like everything in it: engines' data, credentials, logs (0700 directories).
        for directory in (self.plan.data_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            directory.chmod(0o700)
        try:
            await self.start_engines()
            self.nc = await connect_nats(self._nats_settings(), "bev-supervisor", self._nats_user, self._nats_password)
            await self._add_event_stream()
            await self._serve_restarts()
            self._engine_watchers = [_logged_task(self._supervise_engine(name), f"supervising engine {name}")
                                     for name in self.engines]
            await self.start_services()
            self._write_fleet_file()
            instances = await self.wait_healthy()
            took = round(time.monotonic() - began, 1)
            log.info("fleet healthy", seconds=took, instances=len(instances))
            await self._event("fleet.ready", {"seconds": took, "services": sorted(self.children)})
            prometheus = self.engines.get("prometheus")
            metrics = f"prometheus {prometheus.url}  " if isinstance(prometheus, Prometheus) else ""
            gateway = f"gateway http://{self.plan.host}:{self._gateway_port()}  " if "gateway" in self.children else ""
            print(f"bev: fleet up in {took}s; {gateway}{metrics}"
                  f"logs {self.log_dir}  (Ctrl-C stops)", flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await self.shutdown()

    def _stream_replicas(self) -> int:
        """JetStream replicas of the fleet's streams: 3 on the NATS cluster (fewer if fewer NATS nodes)."""
        return min(3, len(self.plan.manifest.engines["nats"].nodes)) if self.plan.cluster is not None else 1

    async def _add_event_stream(self) -> None:
        """BEV_EVENTS, idempotently. On a cluster JetStream answers only once a quorum of NATS
        servers is up and has elected a meta leader: the other nodes may still be starting."""
        assert self.nc is not None
        js = self.nc.jetstream(timeout=5)
        deadline = time.monotonic() + self.health_timeout_s
        while True:
            try:
                await js.add_stream(name="BEV_EVENTS", subjects=["bev.events.>"], num_replicas=self._stream_replicas())
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if self.plan.cluster is None or time.monotonic() > deadline:
                    raise FleetStartError(f"JetStream refused the event stream: {type(exc).__name__}: {exc}") from None
                log.info("waiting for a JetStream quorum (the other NATS nodes)", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)

    def _gateway_port(self) -> int | str:
        return self.plan.service_ports.get("gateway", {}).get("http", "-")

    def _write_fleet_file(self) -> None:
        """What `bev status` and `bev service` need to find this fleet (0600: it holds dev credentials)."""
        vault = self.vault if "vault" in self.engines else None
        state = {
            "node": self.plan.node,
            "supervisor_pid": os.getpid(),
            "nats": {"url": self.nats.url, "user": self._nats_user, "password": self._nats_password,
                     **self._nats_settings().model_dump(include={"tls_ca_file", "tls_cert_file", "tls_key_file"})},
            "vault": {"addr": self.vault_addr, "root_token": vault.root_token if vault is not None else ""},
            "gateway": f"http://{self.plan.host}:{self._gateway_port()}",
            "api_key": self.api_key if "gateway" in self.children else "",
            "services": {name: {"pid": c.process.pid if c.process else None, **self.plan.service_ports[name]}
                         for name, c in self.children.items()},
            "workers": {name: {"pid": c.process.pid if c.process else None, "module": c.module}
                        for name, c in self.workers.items()},
            "engines": {name: {"port": e.port, "pid": e.pid} for name, e in self.engines.items()},
        }
        path = self.plan.data_dir / FLEET_FILE
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written beside it, then renamed over it: a reader (`bev status`, a test) never sees the
        # file truncated mid-write, as it could while an engine restart rewrote it in place.
        staged = path.with_name(f".{path.name}.tmp")
        staged.unlink(missing_ok=True)
        staged.touch(mode=0o600)
        staged.write_text(json.dumps(state, indent=2))
        staged.replace(path)

    async def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping fleet")
        for watcher in self._engine_watchers:
            watcher.cancel()
        await asyncio.gather(*(self._stop_child(c) for c in [*self.workers.values(), *self.children.values()]))
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except (nats.errors.Error, OSError) as exc:  # the bus may be down now: stopping goes on
                log.warning("closing the supervisor's NATS connection failed", error=f"{type(exc).__name__}: {exc}")
        for name in reversed(list(self.engines)):
            await asyncio.to_thread(self.engines[name].stop, 15)
        (self.plan.data_dir / FLEET_FILE).unlink(missing_ok=True)
        log.info("fleet stopped")

    async def _stop_child(self, child: Child, grace_s: float = 15.0) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            log.warning("service ignored SIGTERM; killing", service=child.spec.name)
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _process_targets(plan: FleetPlan, host: str) -> list[dict[str, Any]]:
    """Scrape targets of a plan's services and workers, each on `host`."""
    groups: list[dict[str, Any]] = [
        {"targets": [f"{host}:{plan.service_ports[name]['metrics']}"],
         "labels": {"job": s.name, "node": plan.node, "process": name}}
        for s in plan.services for name in s.replica_names()
    ]
    for spec, worker in plan.workers:
        name = f"{spec.name}-{worker.name}"
        if name in plan.worker_metrics_ports:
            groups.append({"targets": [f"{host}:{plan.worker_metrics_ports[name]}"],
                           "labels": {"job": spec.name, "node": plan.node, "process": name}})
    return groups


def _logged_task(coroutine: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """A supervision task whose death is never silent: it is meant to run for the fleet's life."""
    task = asyncio.create_task(coroutine)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("supervision task died", task=what, error=repr(done.exception()))

    task.add_done_callback(report)
    return task


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-500:]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def read_fleet_file(data_dir: Path) -> dict[str, Any]:
    path = data_dir / FLEET_FILE
    if not path.exists():
        raise FileNotFoundError(f"no fleet is running from {data_dir.absolute()} (no {FLEET_FILE}); start one with `bev up`")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
