"""The embedded engines start from their packaged binaries, do real work and fail clearly."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import psycopg
import pytest
import redis
from falkordb import FalkorDB as FalkorClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from bev.engines import (
    Engine,
    EngineStartError,
    FalkorDB,
    NatsServer,
    OpenBao,
    Postgres,
    Redis,
    free_port,
)

ENGINE_CLASSES: list[type[Engine]] = [NatsServer, Postgres, Redis, FalkorDB, OpenBao]


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port some other process already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("engine_class", ENGINE_CLASSES, ids=lambda cls: cls.name)
def test_command_runs_a_packaged_binary(engine_class: type[Engine], tmp_path: Path) -> None:
    argv = engine_class(tmp_path).command()
    binary = Path(next(arg for arg in argv if not arg.endswith("unshare") and arg.startswith("/")))
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert "site-packages" in str(binary) or ".venv/bin" in str(binary)


async def test_nats_jetstream_stream_publish_get(nats_server: NatsServer) -> None:
    assert nats_server.healthy()
    assert nats_server.url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(nats_server.url)
    try:
        assert nc.max_payload == 8 * 1024 * 1024
        js = nc.jetstream()
        await js.add_stream(name="ENGINES_TEST", subjects=["engines.test.>"])
        ack = await js.publish("engines.test.one", b"evidence")
        message = await js.get_msg("ENGINES_TEST", ack.seq)
        assert message.data == b"evidence"
        assert message.subject == "engines.test.one"
    finally:
        await nc.close()


async def test_nats_with_auth_rejects_anonymous(tmp_path: Path) -> None:
    with NatsServer(tmp_path, user="svc", password="s3cret-pw") as server:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=1)
        nc = await nats.connect(server.url, user="svc", password="s3cret-pw")
        await nc.close()
    assert "s3cret-pw" not in " ".join(server.command())


def test_postgres_vector_nearest_neighbour(postgres_server: Postgres) -> None:
    assert postgres_server.healthy()
    assert postgres_server.dsn.startswith(f"postgresql://bev:{postgres_server.password}@127.0.0.1:")
    with psycopg.connect(postgres_server.dsn) as conn:
        conn.execute("create table docs (id int primary key, embedding vector(3))")
        conn.execute("insert into docs values (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]')")
        row = conn.execute("select id from docs order by embedding <-> '[0.1,0.9,0]' limit 1").fetchone()
    assert row == (2,)


def test_postgres_rejects_a_wrong_password(postgres_server: Postgres) -> None:
    dsn = postgres_server.dsn.replace(postgres_server.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=2)


def test_postgres_restart_reuses_data_dir(tmp_path: Path) -> None:
    with Postgres(tmp_path, fsync=False) as first:
        with psycopg.connect(first.dsn) as conn:
            conn.execute("create table kept (v vector(2))")
            conn.execute("insert into kept values ('[1,2]')")
    version_file = tmp_path / "pgdata" / "PG_VERSION"
    initialised_at = version_file.stat().st_mtime_ns

    # A new object, as after a supervisor restart: the password comes from the data dir.
    with Postgres(tmp_path, fsync=False) as second:
        with psycopg.connect(second.dsn) as conn:
            row = conn.execute("select v::text from kept").fetchone()
    assert row == ("[1,2]",)
    assert version_file.stat().st_mtime_ns == initialised_at


def test_redis_set_get_with_password(redis_server: Redis) -> None:
    assert redis_server.healthy()
    client = redis.Redis.from_url(redis_server.url)
    client.set("engines:test", "value")
    assert client.get("engines:test") == b"value"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(
            host="127.0.0.1", port=redis_server.port, password="wrong", retry=Retry(NoBackoff(), 0)
        ).ping()


def test_redis_restart_keeps_data(tmp_path: Path) -> None:
    with Redis(tmp_path) as first:
        redis.Redis.from_url(first.url).set("kept", "yes")
    with Redis(tmp_path) as second:
        assert redis.Redis.from_url(second.url).get("kept") == b"yes"


def test_falkordb_nodes_and_relation(falkordb_server: FalkorDB, redis_server: Redis) -> None:
    assert falkordb_server.healthy()
    assert falkordb_server.port != redis_server.port
    db = FalkorClient(host=falkordb_server.host, port=falkordb_server.port, password=falkordb_server.password)
    graph = db.select_graph("engines_test")
    graph.query("CREATE (:Actor {name: 'APT-X'})-[:USES]->(:Malware {name: 'dropper'})")
    result = graph.query("MATCH (a:Actor)-[r:USES]->(m:Malware) RETURN a.name, type(r), m.name")
    assert result.result_set == [["APT-X", "USES", "dropper"]]
    # The health probe leaves no graph behind.
    assert "bev:health" not in db.list_graphs()


def test_openbao_is_initialised_and_unsealed(openbao_server: OpenBao) -> None:
    assert openbao_server.healthy()
    assert openbao_server.addr == f"http://127.0.0.1:{openbao_server.port}"
    assert openbao_server.root_token not in " ".join(openbao_server.command())


def test_stop_then_healthy_is_false(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    server.start()
    pid = server.pid
    assert pid is not None and server.healthy()
    server.stop()
    assert server.pid is None and not server.healthy()
    server.stop()  # stopping twice is harmless


@pytest.mark.parametrize("engine_class", ENGINE_CLASSES, ids=lambda cls: cls.name)
def test_busy_port_raises_one_clear_line(
    engine_class: type[Engine], tmp_path: Path, listening_port: int
) -> None:
    engine = engine_class(tmp_path, port=listening_port)
    with pytest.raises(EngineStartError) as raised:
        engine.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"127.0.0.1:{listening_port} already in use" in message
    assert engine.pid is None


class _BadConfigRedis(Redis):
    def config(self) -> str:
        return super().config() + "no-such-directive yes\n"


def test_engine_exiting_at_start_reports_its_log_tail(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError) as raised:
        _BadConfigRedis(tmp_path).start()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("redis exited with code 1 while starting; log ")
    assert str(tmp_path / "redis.log") in message
    assert "no-such-directive" in message


class _NeverHealthyNats(NatsServer):
    def _probe(self) -> None:
        raise ConnectionRefusedError("probe always fails")


def test_engine_not_healthy_in_time_is_stopped(tmp_path: Path) -> None:
    engine = _NeverHealthyNats(tmp_path)
    with pytest.raises(EngineStartError) as raised:
        engine.start(timeout=0.3)
    message = str(raised.value)
    assert "\n" not in message
    assert "nats not healthy within 0.3s (last probe: ConnectionRefusedError: probe always fails)" in message
    assert "Server is ready" in message  # the log tail of the run
    assert engine.pid is None
    assert not engine.healthy()
