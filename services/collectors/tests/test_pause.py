"""Pausing a collector (PauseCollector) for every replica and Celery worker, kept in a real Redis:
runs are refused with who paused it and why, ListCollectors shows it, the pause ends by itself or
on resume, an unreachable Redis lets collection go on, and every run is counted by outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pytest
import pytest_asyncio
import redis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.engines import FalkorDB, NatsServer, Redis, free_port
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.rpc.nats_transport import NatsTransport
from bev.testing.serving import serving_on_nats
from services.collectors.collection import Collection, CollectionRequest
from services.collectors.graph import FalkorGraphStore
from services.collectors.observables import Observable
from services.collectors.pauses import KEY_PREFIX, CollectorPaused, Pauses
from services.collectors.servicer import Collectors, assemble, open_collection
from services.collectors.settings import CollectorsConfig, Settings
from services.collectors.tasks import COLLECT_TASK, CollectJob, create_app
from services.collectors.testing import DnsFixture, HttpFixture, WhoisFixture, local_collectors_config

PROBE = "pause-probe.test"
PROBE_ADDRESS = "203.0.113.77"


@pytest.fixture
def pause_redis_url(redis_server: Redis) -> Iterator[str]:
    """A Redis database of these tests' own (the session's Redis serves other tests' queues); the
    pause keys are removed afterwards."""
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    yield url
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(KEY_PREFIX + "*"):
            client.delete(key)


@pytest.fixture
def pause_config(dns_fixture: DnsFixture, http_fixture: HttpFixture, whois_fixture: WhoisFixture) -> CollectorsConfig:
    dns_fixture.add(PROBE, "A", PROBE_ADDRESS)
    return local_collectors_config(dns_fixture, http_fixture, whois_fixture,
                                   graph={"name": f"pause-{uuid.uuid4().hex[:10]}"})


@pytest.fixture
def secrets(observations_dsn: str, falkordb_server: FalkorDB, pause_redis_url: str) -> dict[str, dict[str, str]]:
    return {
        "redis": {"url": pause_redis_url},
        "postgres": {"dsn": observations_dsn},
        "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                     "password": falkordb_server.password},
    }


@dataclass
class TwoReplicas:
    servicer: Collectors
    client: CollectorsClient
    other: Collection  # another process's collection (a replica, a worker): its own Redis connection


@pytest_asyncio.fixture
async def replicas(nats_server: NatsServer, pause_config: CollectorsConfig, secrets: dict[str, dict[str, str]],
                   pause_redis_url: str) -> AsyncIterator[TwoReplicas]:
    servicer = await assemble(InstanceInfo(service="collectors"), pause_config, lambda name: secrets[name],
                              pauses=Pauses.from_url(pause_redis_url))
    other = await open_collection(pause_config, lambda name: secrets[name], pauses=Pauses.from_url(pause_redis_url))
    graph = servicer.collection.graph
    assert isinstance(graph, FalkorGraphStore)
    try:
        async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60) as nc:
            # Addressed to this replica: other tests' collectors services share the session's bus.
            yield TwoReplicas(servicer, CollectorsClient(NatsTransport(nc, instance=servicer.info.instance)), other)
            await graph.delete_graph()
    finally:
        await other.close()


def runs(collector: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("bev_collector_runs_total", {"collector": collector, "outcome": outcome}) or 0.0


def paused_gauge(collector: str) -> float | None:
    return REGISTRY.get_sample_value("bev_collector_paused", {"collector": collector})


def probe_request() -> collectors_pb2.CollectRequest:
    return collectors_pb2.CollectRequest(collector="dns", target_type="domain-name", target=PROBE,
                                         investigation_id="inv-pause")


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


async def test_a_paused_collector_is_refused_everywhere_until_resumed(replicas: TwoReplicas,
                                                                      pause_redis_url: str) -> None:
    client = replicas.client
    listed = await client.ListCollectors(collectors_pb2.ListCollectorsRequest())
    assert {c.name for c in listed.collectors} >= {"dns", "web"}
    assert all((c.paused_until, c.paused_reason) == (0, "") for c in listed.collectors)
    assert paused_gauge("dns") == 0 and paused_gauge("web") == 0  # exported before any pause
    refused_before, ok_before = runs("dns", "paused"), runs("dns", "ok")

    response = await client.PauseCollector(collectors_pb2.PauseCollectorRequest(
        collector="dns", seconds=600, reason="12 failed runs in 10 min", by="monitoring"))
    paused = response.collector
    assert paused.name == "dns" and paused.paused_reason == "12 failed runs in 10 min"
    assert paused.paused_until == pytest.approx(time.time() + 600, abs=10)
    with redis.Redis.from_url(pause_redis_url) as direct:
        assert 590_000 < direct.pttl(KEY_PREFIX + "dns") <= 600_000  # the pause ends by Redis's own expiry

    expected = f"collector dns is paused until {iso(paused.paused_until)} by monitoring: 12 failed runs in 10 min"
    with pytest.raises(RpcError) as refused:
        _ = [obs async for obs in client.Collect(probe_request())]
    assert refused.value.code == StatusCode.UNAVAILABLE and refused.value.message == expected
    # another process reads the same pause from Redis
    with pytest.raises(CollectorPaused) as elsewhere:
        _ = [s async for s in replicas.other.run(CollectionRequest("dns", Observable("domain-name", PROBE)))]
    assert str(elsewhere.value) == expected
    assert runs("dns", "paused") == refused_before + 2 and runs("dns", "ok") == ok_before
    assert paused_gauge("dns") == 1

    listed = await client.ListCollectors(collectors_pb2.ListCollectorsRequest())
    by_name = {c.name: c for c in listed.collectors}
    assert (by_name["dns"].paused_until, by_name["dns"].paused_reason) == (paused.paused_until, paused.paused_reason)
    assert by_name["web"].paused_until == 0 and by_name["whois"].paused_reason == ""

    resumed = await client.PauseCollector(collectors_pb2.PauseCollectorRequest(collector="dns", seconds=0,
                                                                               by="operator"))
    assert (resumed.collector.paused_until, resumed.collector.paused_reason) == (0, "")
    found = [obs async for obs in client.Collect(probe_request())]
    assert PROBE_ADDRESS in {obs.entity.value for obs in found}
    assert runs("dns", "ok") == ok_before + 1 and paused_gauge("dns") == 0
    listed = await client.ListCollectors(collectors_pb2.ListCollectorsRequest())
    assert all(c.paused_until == 0 for c in listed.collectors)


async def test_a_pause_ends_by_itself(replicas: TwoReplicas) -> None:
    await replicas.client.PauseCollector(collectors_pb2.PauseCollectorRequest(
        collector="dns", seconds=0.5, reason="brief", by="monitoring"))
    with pytest.raises(RpcError) as refused:
        _ = [obs async for obs in replicas.client.Collect(probe_request())]
    assert refused.value.code == StatusCode.UNAVAILABLE and refused.value.message.endswith("by monitoring: brief")
    assert paused_gauge("dns") == 1
    await asyncio.sleep(0.7)
    assert paused_gauge("dns") == 0  # read at scrape time: the pause's end needs no other look at Redis
    found = [obs async for obs in replicas.client.Collect(probe_request())]
    assert PROBE_ADDRESS in {obs.entity.value for obs in found}
    listed = await replicas.client.ListCollectors(collectors_pb2.ListCollectorsRequest())
    assert {c.name: c.paused_until for c in listed.collectors}["dns"] == 0


async def test_pause_refuses_an_unknown_collector_and_negative_seconds(replicas: TwoReplicas) -> None:
    with pytest.raises(RpcError) as unknown:
        await replicas.client.PauseCollector(collectors_pb2.PauseCollectorRequest(collector="shodan", seconds=60))
    assert unknown.value.code == StatusCode.NOT_FOUND
    assert unknown.value.message.startswith("no collector named 'shodan'; known: ")
    assert "dns" in unknown.value.message
    with pytest.raises(RpcError) as negative:
        await replicas.client.PauseCollector(collectors_pb2.PauseCollectorRequest(collector="dns", seconds=-5))
    assert negative.value.code == StatusCode.INVALID_ARGUMENT
    assert negative.value.message == "seconds must be 0 (resume) or more, not -5.0"


async def test_failed_runs_are_counted_and_caller_errors_are_not(replicas: TwoReplicas,
                                                                 http_fixture: HttpFixture) -> None:
    url = http_fixture.serve(f"/pause/{uuid.uuid4().hex[:6]}.html", "engine down", status=503)
    errors, ok = runs("web", "error"), runs("web", "ok")
    with pytest.raises(RpcError) as failed:
        _ = [obs async for obs in replicas.client.Collect(collectors_pb2.CollectRequest(
            collector="web", target_type="url", target=url))]
    assert failed.value.code == StatusCode.UNAVAILABLE and "HTTP 503" in failed.value.message
    assert runs("web", "error") == errors + 1
    with pytest.raises(RpcError) as refused:  # the SSRF guard refuses the target: the caller's error
        _ = [obs async for obs in replicas.client.Collect(collectors_pb2.CollectRequest(
            collector="web", target_type="url", target="http://169.254.169.254/latest/meta-data/"))]
    assert refused.value.code == StatusCode.PERMISSION_DENIED
    assert (runs("web", "error"), runs("web", "ok")) == (errors + 1, ok)


async def test_an_unreachable_redis_lets_collection_go_on(pause_config: CollectorsConfig,
                                                          secrets: dict[str, dict[str, str]]) -> None:
    nowhere = Pauses.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    collection = await open_collection(pause_config, lambda name: secrets[name], pauses=nowhere)
    servicer = Collectors(InstanceInfo(service="collectors"), pause_config, collection)
    ctx = CallContext("collectors", "PauseCollector", "nats", time.monotonic() + 10)
    graph = collection.graph
    assert isinstance(graph, FalkorGraphStore)
    try:
        ok = runs("dns", "ok")
        with capture_logs() as logs:
            found = [s async for s in collection.run(CollectionRequest("dns", Observable("domain-name", PROBE)))]
            listed = await servicer.ListCollectors(collectors_pb2.ListCollectorsRequest(), ctx)
        assert PROBE_ADDRESS in {s.entity.value for s in found} and runs("dns", "ok") == ok + 1
        assert all(c.paused_until == 0 for c in listed.collectors)
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert [w["event"] for w in warnings] == ["pause check failed; the collector runs",
                                                  "pauses unreadable; listing collectors as not paused"]
        assert warnings[0]["collector"] == "dns" and "Redis" in warnings[0]["error"]
        # pausing needs Redis: the caller is told it did not happen
        with pytest.raises(RpcError) as unavailable:
            await servicer.PauseCollector(collectors_pb2.PauseCollectorRequest(collector="dns", seconds=60), ctx)
        assert unavailable.value.code == StatusCode.UNAVAILABLE
        assert unavailable.value.message.startswith("cannot pause dns: Redis: ")
    finally:
        await graph.delete_graph()
        await servicer.close()


async def test_a_celery_task_of_a_paused_collector_is_skipped_and_runs_after_resume(
        pause_config: CollectorsConfig, secrets: dict[str, dict[str, str]], pause_redis_url: str) -> None:
    app = create_app(Settings(collectors=pause_config), lambda name: secrets[name])
    job = CollectJob("dns", "domain-name", PROBE, investigation_id=f"inv-{uuid.uuid4().hex[:6]}")

    def run_task() -> dict[str, object]:
        # The worker's own task body, run in this process (asyncio.run inside: off the test's loop).
        result: dict[str, object] = app.tasks[COLLECT_TASK].apply(args=[asdict(job)]).get()
        return result

    pauses = Pauses.from_url(pause_redis_url)
    try:
        pause = await pauses.pause("dns", 600, "resolver timeouts", "monitoring")
        paused_runs = runs("dns", "paused")
        with capture_logs() as logs:
            skipped = await asyncio.to_thread(run_task)
        message = f"collector dns is paused until {iso(pause.until)} by monitoring: resolver timeouts"
        assert skipped == {"key": job.key, "observations": 0, "already_done": False, "skipped": message}, logs
        assert runs("dns", "paused") == paused_runs + 1
        [line] = [entry for entry in logs if entry["event"] == "collection task skipped: its collector is paused"]
        assert line["log_level"] == "warning" and line["task_key"] == job.key and line["paused"] == message

        await pauses.resume("dns")
        done = await asyncio.to_thread(run_task)  # a skipped task was not recorded as done: it runs now
        assert done["key"] == job.key and not done["already_done"] and int(str(done["observations"])) > 0
    finally:
        await pauses.close()
        graph = FalkorGraphStore(secrets["falkordb"]["host"], int(secrets["falkordb"]["port"]),
                                 secrets["falkordb"]["password"], pause_config.graph.name)
        await graph.delete_graph()
        await graph.close()
