"""A real Celery worker (its own process, Vault login, Redis broker) killed with SIGKILL mid-task:
the task is delivered again and completes exactly once; running it again adds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import psycopg
import pytest

from bev.engines import FalkorDB, OpenBao, Postgres, Redis
from services.collectors.settings import CeleryConfig, CollectorsConfig, Settings
from services.collectors.tasks import COLLECT_TASK, CollectJob, create_app
from services.collectors.testing import HttpFixture, celery_processes

REPO = Path(__file__).resolve().parents[3]
BLOG = REPO / "services" / "collectors" / "tests" / "data" / "threat-blog.html"


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_worker_killed_mid_task_completes_exactly_once(
        openbao_server: OpenBao, redis_server: Redis, postgres_server: Postgres, falkordb_server: FalkorDB,
        http_fixture: HttpFixture, tmp_path: Path) -> None:
    graph = f"celery-{uuid.uuid4().hex[:8]}"
    celery = celery_processes(openbao_server, redis_server.url, postgres_server, falkordb_server, tmp_path,
                              BEV_COLLECTORS__CELERY__POOL="solo", BEV_COLLECTORS__CELERY__VISIBILITY_TIMEOUT_S="3",
                              BEV_COLLECTORS__GRAPH__NAME=graph)
    secrets = celery.secrets

    def start_worker(log: str) -> subprocess.Popen[bytes]:
        return celery.start("services.collectors.worker", log)

    page = f"/celery/{uuid.uuid4().hex[:6]}.html"
    url = http_fixture.serve(page, BLOG.read_bytes(), delay_s=2.0)  # slow enough to be killed mid-task
    job = CollectJob("web", "url", url, investigation_id="inv-celery")
    app = create_app(Settings(collectors=CollectorsConfig(celery=CeleryConfig(visibility_timeout_s=3))), lambda name: secrets[name])

    first = start_worker("worker-1.log")
    try:
        result = app.send_task(COLLECT_TASK, args=[asdict(job)])
        _wait(lambda: http_fixture.peers(page), 60, "the worker to start fetching")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    second = start_worker("worker-2.log")
    try:
        outcome = result.get(timeout=90)
        assert outcome["key"] == job.key and not outcome["already_done"] and outcome["observations"] > 10
        assert len(http_fixture.peers(page)) == 2  # killed once, then delivered again

        again = app.send_task(COLLECT_TASK, args=[asdict(job)]).get(timeout=60)
        assert again == {"key": job.key, "observations": outcome["observations"], "already_done": True}
        assert len(http_fixture.peers(page)) == 2  # the completed task is not run again
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(20)

    with psycopg.connect(postgres_server.dsn) as conn:
        runs = conn.execute("select count(*) from collectors.task_runs where task_key = %s", (job.key,)).fetchone()
    assert runs == (1,)
    assert (tmp_path / "run" / "collectors-worker.alive").exists()  # its healthcheck file


@pytest.mark.slow
def test_beat_polls_configured_feeds_through_the_worker(
        openbao_server: OpenBao, redis_server: Redis, postgres_server: Postgres, falkordb_server: FalkorDB,
        http_fixture: HttpFixture, tmp_path: Path) -> None:
    feed = f"/beat/{uuid.uuid4().hex[:6]}.rss"
    url = http_fixture.serve(feed, (REPO / "services/collectors/tests/data/feed.rss").read_bytes(),
                             "application/rss+xml")
    celery = celery_processes(
        openbao_server, redis_server.url.rsplit("/", 1)[0] + "/3", postgres_server, falkordb_server, tmp_path,
        BEV_COLLECTORS__CELERY__POOL="solo", BEV_COLLECTORS__GRAPH__NAME=f"beat-{uuid.uuid4().hex[:8]}",
        BEV_COLLECTORS__FEEDS=f'[{{"name": "cert-example", "url": "{url}", "interval_s": 2}}]')
    with psycopg.connect(postgres_server.dsn) as conn:
        before = conn.execute("select count(*) from collectors.task_runs").fetchone()
    processes = []
    try:
        for module in ("services.collectors.worker", "services.collectors.beat"):
            processes.append(celery.start(module, f"{module}.log"))
        _wait(lambda: len(http_fixture.peers(feed)) >= 2, 60, "two polls of the feed")
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(20)
    with psycopg.connect(postgres_server.dsn) as conn:
        after = conn.execute("select count(*) from collectors.task_runs").fetchone()
    assert before is not None and after is not None and after[0] - before[0] >= 1  # a completed run per interval
    assert (tmp_path / "run" / "collectors-beat.alive").exists()
