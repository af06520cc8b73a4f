"""The collectors' metrics: threat entities counted once when first written to the graph, Celery queue
depths read from the broker at scrape time (absent, not an error, when Redis cannot answer), and a
real prefork worker and beat serving /metrics that promtool accepts, with the counts the worker's
children recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from bev.engines import FalkorDB, OpenBao, Postgres, Redis, free_port
from services.collectors.celery_process import CeleryQueueDepth
from services.collectors.graph import THREAT_KINDS, CypherGraphStore, EntityRow
from services.collectors.settings import CeleryConfig, CollectorsConfig, Settings
from services.collectors.tasks import COLLECT_TASK, CollectJob, create_app
from services.collectors.testing import HttpFixture, celery_processes

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "services" / "collectors" / "tests" / "data"
TAXII = "application/taxii+json;version=2.1"


def promtool_problems(exposition: bytes) -> str:
    """What `promtool check metrics` says about an exposition ("" when it passes)."""
    checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=30,
                             check=False)
    problems = (checked.stdout + checked.stderr).decode().strip()
    return problems or ("" if checked.returncode == 0 else f"promtool exited {checked.returncode}")


def detections() -> dict[str, float]:
    return {kind: REGISTRY.get_sample_value("bev_threat_detections_total", {"kind": kind}) or 0.0
            for kind in THREAT_KINDS}


async def test_threat_entities_are_counted_when_first_written(graph_store: CypherGraphStore) -> None:
    malware = EntityRow(f"malware--{uuid.uuid4()}", "malware", "HarborLoader")
    group = EntityRow(f"intrusion-set--{uuid.uuid4()}", "intrusion-set", "Glass Harbor")
    domain = EntityRow(f"domain-name--{uuid.uuid4()}", "domain-name", "c2.glassharbor.example")
    before = detections()
    await graph_store.upsert([malware, domain])
    await graph_store.upsert([malware, domain])  # written again: nothing new
    await graph_store.upsert([malware, group, group])  # a known malware; a new group, twice in one batch
    after = detections()
    assert {kind: after[kind] - before[kind] for kind in THREAT_KINDS} == {
        "malware": 1, "threat-actor": 0, "intrusion-set": 1, "campaign": 0, "attack-pattern": 0}
    assert await graph_store.counts() == (3, 0)  # the counting read wrote nothing


def test_celery_queue_depth_is_read_from_the_broker(redis_server: Redis) -> None:
    broker = redis_server.url.rsplit("/", 1)[0] + "/6"  # a database of its own: no worker takes these
    settings = Settings(collectors=CollectorsConfig(celery=CeleryConfig(broker_url=broker)))
    app = create_app(settings, lambda name: {})
    queue_depth = CeleryQueueDepth.of(app)
    assert queue_depth is not None
    registry = CollectorRegistry()
    registry.register(queue_depth)
    broker_db = redis.Redis.from_url(broker)
    try:
        broker_db.flushdb()
        assert registry.get_sample_value("bev_celery_queue_depth", {"queue": "celery"}) == 0
        for n in range(3):
            app.send_task(COLLECT_TASK, args=[asdict(CollectJob("dns", "domain-name", f"q{n}.example.test"))])
        assert registry.get_sample_value("bev_celery_queue_depth", {"queue": "celery"}) == 3
        assert promtool_problems(generate_latest(registry)) == ""
    finally:
        broker_db.flushdb()
        broker_db.close()
        queue_depth.close()


def test_celery_queue_depth_is_absent_while_redis_is_down() -> None:
    registry = CollectorRegistry()
    down = CeleryQueueDepth(f"redis://127.0.0.1:{free_port()}/0", ["celery"])
    registry.register(down)
    started = time.monotonic()
    text = generate_latest(registry).decode()  # no exception: the gauge is left out of this scrape
    assert "bev_celery_queue_depth{" not in text and time.monotonic() - started < 5
    down.close()
    memory = create_app(Settings(collectors=CollectorsConfig(celery=CeleryConfig(broker_url="memory://"))),
                        lambda name: {})
    assert CeleryQueueDepth.of(memory) is None  # only a Redis broker has lists to measure


def _scrape(port: int, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _value(text: str, sample: str) -> float | None:
    """The value of the exposition line that starts with `sample` (name and labels), or None."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_worker_and_beat_serve_metrics_with_their_childrens_counts(
        openbao_server: OpenBao, redis_server: Redis, postgres_server: Postgres, falkordb_server: FalkorDB,
        http_fixture: HttpFixture, tmp_path: Path) -> None:
    base = f"/taxii2/api1/collections/{uuid.uuid4()}"
    http_fixture.serve(f"{base}/objects/", (DATA / "taxii-page1.json").read_bytes(), TAXII)
    http_fixture.serve(f"{base}/objects/?next=page-2", (DATA / "taxii-page2.json").read_bytes(), TAXII)
    temp = tmp_path / "tmp"  # where the worker keeps its children's metric files while it runs
    temp.mkdir()
    celery = celery_processes(
        openbao_server, redis_server.url.rsplit("/", 1)[0] + "/7", postgres_server, falkordb_server, tmp_path,
        BEV_COLLECTORS__CELERY__POOL="prefork", BEV_COLLECTORS__CELERY__CONCURRENCY="1",
        BEV_COLLECTORS__GRAPH__NAME=f"metrics-{uuid.uuid4().hex[:8]}", TMPDIR=str(temp))
    secrets = celery.secrets
    ports = {"services.collectors.worker": free_port(), "services.collectors.beat": free_port()}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for module, port in ports.items():
            processes.append(celery.start(module, f"{module}.log", BEV_TELEMETRY__METRICS_PORT=str(port)))
        app = create_app(Settings(), lambda name: secrets[name])
        job = CollectJob("taxii", "url", http_fixture.url(base + "/"))
        outcome = app.send_task(COLLECT_TASK, args=[asdict(job)]).get(timeout=90)  # run in a prefork child
        assert outcome["observations"] > 0

        worker = _scrape(ports["services.collectors.worker"])
        for kind in ("malware", "intrusion-set"):  # counted in the child, summed by the main process
            assert (_value(worker, f'bev_threat_detections_total{{kind="{kind}"}}') or 0) >= 1, worker
        assert _value(worker, 'bev_celery_queue_depth{queue="celery"}') == 0
        assert (_value(worker, "process_resident_memory_bytes") or 0) > 0
        assert f'bev_disk_free_bytes{{path="{tmp_path.resolve()}"}}' in worker
        assert promtool_problems(worker.encode()) == ""
        assert list(temp.glob("bev-collectors-worker-metrics-*/*.db"))  # the children's metric files

        beat = _scrape(ports["services.collectors.beat"])
        assert (_value(beat, "process_cpu_seconds_total") or 0) > 0
        assert f'bev_disk_free_bytes{{path="{tmp_path.resolve()}"}}' in beat
        assert promtool_problems(beat.encode()) == ""
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(30)
    assert list(temp.glob("bev-collectors-worker-metrics-*")) == []  # removed on the worker's way out
