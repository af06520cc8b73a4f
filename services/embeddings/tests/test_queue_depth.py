"""bev_embeddings_queue_depth: texts waiting at a model's micro-batcher, read at scrape time, and
ingest jobs waiting in PostgreSQL, kept current by the instance's ingest workers; absent once they
stop. The service assembled as it starts (real PostgreSQL, the real MiniLM)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from bev.rpc import InstanceInfo
from services.embeddings.corpus import NewDocument
from services.embeddings.metrics import INGEST_DEPTH_EVERY_S
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.servicer import EmbeddingsDeps, assemble
from services.embeddings.settings import EmbeddingsConfig


def depth(queue: str) -> float | None:
    return REGISTRY.get_sample_value("bev_embeddings_queue_depth", {"queue": queue})


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not reported in time"
        await asyncio.sleep(0.05)


async def test_queue_depths_are_exported(minilm: SentenceEmbedder, fresh_database: Callable[[], str],
                                         tmp_path: Path) -> None:
    # Callers wait up to 1 s for company; workers look for jobs only when started, then hourly.
    config = EmbeddingsConfig(max_wait_ms=1000, ingest_workers=1, ingest_poll_s=3600)
    models = ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)
    servicer = await assemble(InstanceInfo(service="embeddings"), config,
                              EmbeddingsDeps(fresh_database(), tmp_path, models))
    batcher = f"batcher:{minilm.name}"
    try:
        await servicer.start()
        assert depth(batcher) == 0
        waiting = [asyncio.create_task(models.default.batcher.embed([f"beacon {n}"])) for n in range(3)]
        await asyncio.sleep(0.2)  # queued, waiting for company
        assert depth(batcher) == 3
        await asyncio.gather(*waiting)
        assert depth(batcher) == 0

        for n in range(2):  # stored, not announced: the idle worker does not look until its next poll
            await servicer.jobs.submit(NewDocument(content=f"report {n}".encode(), filename=f"r{n}.txt"))
        await _until(lambda: depth("ingest") == 2, INGEST_DEPTH_EVERY_S + 5)

        exposition = generate_latest(REGISTRY)
        checked = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=exposition,
                                          capture_output=True, timeout=30, check=False)
        problems = (checked.stdout + checked.stderr).decode().strip()
        assert checked.returncode == 0 and not problems, problems
    finally:
        await servicer.close()
    assert depth("ingest") is None  # no worker keeps it current now: no figure rather than a stale one
