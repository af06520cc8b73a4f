"""A three-node NATS cluster with client and route TLS, and JetStream R3 under node kills.

Real nats-server processes on 127.0.0.1; certificates from a throwaway CA (trustme) minted here.
The Jepsen-style test publishes through `connect_nats`, the client every BEV process uses.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import trustme
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bev.bus import BusUnavailable, connect_nats
from bev.engines import NatsCluster, NatsServer, NatsTls, free_port
from bev.engines._base import http_get
from bev.settings import NatsSettings

NODE_NAMES = ("thanos", "starlord", "oracle1")
CLUSTER = "bev-test"
PUBLISHES = 10_000
PUBLISH_RATE = 300  # per second: spreads the publishes over ~33 s, so several kills land mid-run
PUBLISHERS = 64  # publishes in flight at once
CHAOS_SEED = 7


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_file: Path
    server: NatsTls  # one certificate for every node: all of them are 127.0.0.1
    client_cert: Path
    client_key: Path
    foreign_cert: Path  # from another CA, for 127.0.0.1: usable as a client's or a route's
    foreign_key: Path


def _write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("nats-pki")
    ca, foreign_ca = trustme.CA(), trustme.CA()
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    server_cert, server_key = _write_leaf(ca.issue_cert("127.0.0.1", "localhost"), directory, "server")
    client_cert, client_key = _write_leaf(ca.issue_cert("bev-client@test"), directory, "client")
    foreign_cert, foreign_key = _write_leaf(foreign_ca.issue_cert("127.0.0.1", "localhost"), directory, "foreign")
    return Pki(directory, ca_file, NatsTls(ca_file, server_cert, server_key), client_cert, client_key,
               foreign_cert, foreign_key)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[list[NatsServer]]:
    """Three nodes, each given all three route addresses (its own too), as the lab does."""
    route_ports = [free_port() for _ in NODE_NAMES]
    routes = [f"127.0.0.1:{port}" for port in route_ports]
    nodes = [
        NatsServer(
            tmp_path_factory.mktemp(f"nats-{name}"),
            server_name=name,
            cluster=NatsCluster(CLUSTER, port, routes, user="route", password="r0ute-pw", tls=pki.server),
            tls=pki.server,
            sync_always=True,
        )
        for name, port in zip(NODE_NAMES, route_ports, strict=True)
    ]
    try:
        for node in nodes:  # each is healthy alone: the probe does not wait for the others
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _settings(nodes: list[NatsServer], pki: Pki, **tls: str) -> NatsSettings:
    files = {"tls_ca_file": str(pki.ca_file), "tls_cert_file": str(pki.client_cert),
             "tls_key_file": str(pki.client_key)}
    return NatsSettings(url=",".join(node.url for node in nodes), connect_timeout_s=10, **{**files, **tls})


def _monitor(node: NatsServer, path: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(http_get(f"{node.monitor_url}{path}"))
    return body


async def _eventually(what: str, check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.1)


async def _add_stream(nc: NatsClient, config: StreamConfig) -> None:
    """Create an R3 stream once the cluster has a JetStream meta leader to ask."""
    js = nc.jetstream(timeout=2)

    async def created() -> bool:
        try:
            await js.add_stream(config)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            return False
        return True

    await _eventually(f"stream {config.name} created", created)


async def _replicated(nc: NatsClient, stream: str) -> bool:
    """The stream has a leader and both other nodes are current replicas."""
    try:
        info = await nc.jetstream(timeout=2).stream_info(stream)
    except nats.errors.Error:
        return False
    peers = info.cluster.replicas if info.cluster and info.cluster.replicas else []
    return bool(info.cluster and info.cluster.leader) and len(peers) == 2 and all(p.current for p in peers)


async def test_three_tls_nodes_form_a_cluster_and_replicate(cluster: list[NatsServer], pki: Pki) -> None:
    assert all(node.url.startswith("tls://127.0.0.1:") for node in cluster)

    async def all_routed() -> bool:
        for node in cluster:
            peers = {route["remote_name"] for route in _monitor(node, "/routez")["routes"]}
            if peers != set(NODE_NAMES) - {node.server_name}:
                return False
        return True

    await _eventually("every node routed to the other two", all_routed)
    nc = await connect_nats(_settings(cluster, pki), "bev-test")
    try:
        await _add_stream(nc, StreamConfig(name="FORMED", subjects=["formed.>"], num_replicas=3))
        await _eventually("FORMED has a leader and 2 current replicas", lambda: _replicated(nc, "FORMED"))
        ack = await nc.jetstream().publish("formed.one", b"replicated")
        assert ack.stream == "FORMED" and ack.seq == 1
    finally:
        await nc.close()


@dataclass
class JepsenRun:
    acked: dict[str, int] = field(default_factory=dict)  # msg id -> stream sequence in its ack
    retries: int = 0
    retried_ids: set[str] = field(default_factory=set)
    duplicate_acks: int = 0  # a retry whose first try had been stored after all
    errors: Counter[str] = field(default_factory=Counter)
    kills: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def _stream_leader(nodes: list[NatsServer], stream: str) -> str | None:
    """The stream's leader as a running node's monitor sees it (the bus may be stalled)."""
    for node in nodes:
        if not node.running():
            continue
        try:
            jsz = _monitor(node, "/jsz?accounts=true&streams=true")
        except (OSError, http.client.HTTPException):
            continue
        for account in jsz.get("account_details", []):
            for detail in account.get("stream_detail", []):
                leader = detail.get("cluster", {}).get("leader")
                if detail["name"] == stream and leader:
                    return str(leader)
    return None


async def _kill(node: NatsServer) -> None:
    pid = node.pid
    assert pid is not None, f"{node.server_name} is not running"
    os.kill(pid, signal.SIGKILL)

    async def reaped() -> bool:  # exit_code() reaps it; Engine.start would otherwise see it still running
        return node.exit_code() is not None

    await _eventually(f"{node.server_name} gone after SIGKILL", reaped, within=10)


async def _chaos(nodes: list[NatsServer], stream: str, run: JepsenRun) -> None:
    """Every 3-10 s SIGKILL a node (every other time the stream's leader), restart it ~1 s later."""
    rng = random.Random(CHAOS_SEED)
    while True:
        try:
            await asyncio.wait_for(run.stop.wait(), rng.uniform(3, 10))
        except TimeoutError:
            pass  # time for the next kill
        else:
            return
        leader = await asyncio.to_thread(_stream_leader, nodes, stream) if len(run.kills) % 2 == 0 else None
        victim = next((n for n in nodes if n.server_name == leader), None) or rng.choice(nodes)
        await _kill(victim)
        run.kills.append(victim.server_name + (" (leader)" if victim.server_name == leader else ""))
        await asyncio.sleep(1)
        await asyncio.to_thread(victim.start, 30)


async def _publish_all(nc: NatsClient, run: JepsenRun) -> None:
    js = nc.jetstream()
    ids = iter(range(PUBLISHES))
    start = time.monotonic()

    async def publisher() -> None:
        for i in ids:
            await asyncio.sleep(max(0.0, start + i / PUBLISH_RATE - time.monotonic()))
            msg_id = f"msg-{i:05d}"
            payload = f"{msg_id}:{random.getrandbits(64):016x}".encode()
            while True:
                try:
                    ack = await js.publish(f"jepsen.{i % 16}", payload, timeout=2,
                                           headers={"Nats-Msg-Id": msg_id})
                except nats.errors.Error as exc:  # timeout, no responders, stream API error...
                    run.retries += 1
                    run.retried_ids.add(msg_id)
                    run.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)
                    continue
                run.acked[msg_id] = ack.seq
                run.duplicate_acks += bool(ack.duplicate)
                break

    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))


async def _read_stream(nc: NatsClient, stream: str) -> list[tuple[str, int, bytes]]:
    """Every message of the stream as (msg id, sequence, payload), through a pull consumer.

    Creating the consumer goes through the JetStream meta leader, which may itself be settling
    after the last restart: retried, as is a fetch that times out while messages are pending.
    """
    js = nc.jetstream(timeout=2)
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60)
    subscription: list[JetStreamContext.PullSubscription] = []

    async def subscribed() -> bool:
        try:  # the same durable name each try: creating it again is a no-op
            subscription.append(await js.pull_subscribe("jepsen.>", "jepsen-reader", stream=stream, config=config))
        except nats.errors.Error:
            return False
        return True

    await _eventually("reader consumer created", subscribed)
    sub = subscription[0]
    read: list[tuple[str, int, bytes]] = []
    pending = 1  # unknown until the first message
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        try:
            batch = await sub.fetch(1000, timeout=5)
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            assert msg.headers is not None
            read.append((msg.headers["Nats-Msg-Id"], msg.metadata.sequence.stream, msg.data))
            pending = msg.metadata.num_pending
    await sub.unsubscribe()
    return read


async def test_jepsen_r3_stream_keeps_every_acked_publish_once_under_node_kills(
    cluster: list[NatsServer], pki: Pki
) -> None:
    stream = "JEPSEN"
    nc = await connect_nats(_settings(cluster, pki), "bev-jepsen")
    run = JepsenRun()
    started = time.monotonic()
    try:
        # The dedup window outlasts the run, so a retry of anything stored is recognised.
        await _add_stream(nc, StreamConfig(name=stream, subjects=["jepsen.>"], num_replicas=3,
                                           storage=StorageType.FILE, duplicate_window=600))
        await _eventually(f"{stream} replicated", lambda: _replicated(nc, stream))
        chaos = asyncio.create_task(_chaos(cluster, stream, run))
        try:
            await _publish_all(nc, run)
        finally:
            run.stop.set()
            await chaos  # a kill in progress finishes its restart first
        published_s = time.monotonic() - started

        def converged() -> bool:
            """Each node's own replica holds exactly the acked messages."""
            counts = []
            for node in cluster:
                try:
                    jsz = _monitor(node, "/jsz?accounts=true&streams=true")
                except (OSError, http.client.HTTPException):
                    return False
                details = [d for a in jsz.get("account_details", []) for d in a.get("stream_detail", [])]
                counts += [d["state"]["messages"] for d in details if d["name"] == stream]
            return counts == [len(run.acked)] * len(cluster)

        await _eventually("all three replicas hold every acked message", lambda: asyncio.to_thread(converged))
        await _eventually(f"{stream} replicated", lambda: _replicated(nc, stream))
        read = await _read_stream(nc, stream)
    finally:
        await nc.close()

    ids = Counter(msg_id for msg_id, _, _ in read)
    print(
        f"\njepsen: {PUBLISHES} publishes acked in {published_s:.1f}s, {len(run.kills)} kills "
        f"({', '.join(run.kills)}), {run.retries} retries of {len(run.retried_ids)} publishes "
        f"({dict(run.errors)}), "
        f"{run.duplicate_acks} de-duplicated retries, {len(read)} messages read back, "
        f"{time.monotonic() - started:.1f}s in all"
    )
    assert len(run.acked) == PUBLISHES
    assert len(run.kills) >= 2, "the run ended before the chaos got going: lower PUBLISH_RATE"
    assert [msg_id for msg_id, count in ids.items() if count > 1] == []
    assert sorted(set(run.acked) - set(ids)) == []
    assert len(read) == len(run.acked)
    for msg_id, seq, payload in read:
        assert run.acked[msg_id] == seq  # a duplicate's ack names the sequence of the stored original
        assert payload.startswith(f"{msg_id}:".encode())


async def _refused(settings: NatsSettings) -> str:
    with pytest.raises(BusUnavailable) as refused:
        await connect_nats(settings.model_copy(update={"connect_timeout_s": 3}), "bev-outsider")
    return str(refused.value)


async def test_clients_without_a_certificate_from_the_ca_are_refused(cluster: list[NatsServer], pki: Pki) -> None:
    one = cluster[:1]
    message = await _refused(_settings(one, pki, tls_cert_file="", tls_key_file=""))
    assert "SSLError" in message and "certificate required" in message
    message = await _refused(_settings(one, pki, tls_cert_file=str(pki.foreign_cert),
                                       tls_key_file=str(pki.foreign_key)))
    assert "SSLError" in message and "unknown ca" in message
    nc = await connect_nats(_settings(one, pki), "bev-insider")  # the same server, with the CA's certificate
    assert nc.is_connected
    await nc.close()


async def test_an_unusable_tls_file_fails_in_one_line(pki: Pki) -> None:
    nowhere: list[NatsServer] = []  # it fails before dialling anything
    missing = pki.dir / "missing-ca.crt"
    with pytest.raises(BusUnavailable, match=rf"NATS TLS file {re.escape(str(missing))} is unusable .*fix BEV_NATS__TLS_CA_FILE$"):
        await connect_nats(_settings(nowhere, pki, tls_ca_file=str(missing)), "bev-test")
    with pytest.raises(BusUnavailable, match=r"fix BEV_NATS__TLS_CERT_FILE and BEV_NATS__TLS_KEY_FILE$"):
        await connect_nats(_settings(nowhere, pki, tls_key_file=str(pki.ca_file)), "bev-test")  # holds no key


def _route_rejections(node: NatsServer) -> list[datetime]:
    """When the node refused a route's TLS handshake, from its log."""
    times = []
    for line in node.log_path.read_text().splitlines():
        if "TLS route handshake error" in line:
            _, day, clock = line.split(" ", 3)[:3]
            times.append(datetime.strptime(f"{day} {clock}", "%Y/%m/%d %H:%M:%S.%f"))
    return times


@pytest.mark.parametrize("route_tls", ["none", "foreign-ca"])
async def test_a_server_whose_route_lacks_a_ca_certificate_does_not_join(
    cluster: list[NatsServer], pki: Pki, tmp_path: Path, route_tls: str
) -> None:
    routes = [f"127.0.0.1:{node.cluster.port}" for node in cluster if node.cluster]
    # It trusts the cluster's CA (it could verify the nodes) but its own certificate is not the CA's.
    tls = NatsTls(pki.ca_file, pki.foreign_cert, pki.foreign_key) if route_tls == "foreign-ca" else None
    before = [len(_route_rejections(node)) for node in cluster]
    intruder = NatsServer(tmp_path, server_name="intruder",
                          cluster=NatsCluster(CLUSTER, 0, routes, user="route", password="r0ute-pw", tls=tls))
    with intruder:

        async def refused_and_retried() -> bool:
            """Each node refused its routes, and again on its retry a second or more later."""
            for node, seen in zip(cluster, before, strict=True):
                new = _route_rejections(node)[seen:]
                if not new or new[-1] - new[0] < timedelta(seconds=1):
                    return False
            return True

        await _eventually("every node refused the intruder's routes, twice", refused_and_retried)
        assert _monitor(intruder, "/routez")["num_routes"] == 0
        for node in cluster:
            assert "intruder" not in {route["remote_name"] for route in _monitor(node, "/routez")["routes"]}
