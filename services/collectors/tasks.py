"""Collection as Celery tasks (Redis broker), and the beat schedule that polls configured feeds.

Delivery is at-least-once and completion exactly-once:

* `acks_late` + `task_reject_on_worker_lost`: a task is acknowledged only after it finished, so a
  worker killed mid-task (even SIGKILL) leaves the message to be delivered again.
* Every write a collection makes is keyed by deterministic ids (graph MERGE, observation upsert),
  so a redelivered or repeated task adds nothing; its completion is recorded once, under a key
  derived from its arguments, in `collectors.task_runs` (first writer wins).
* Per-collector rate limits make a task wait for its slot (services.collectors.ratelimit), so a
  burst of work queues up rather than failing.
* A paused collector's task (PauseCollector; the pause is kept in the broker's Redis) is skipped
  with a log line and not recorded as done: a later poll runs it once the pause is over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery

from bev.telemetry import get_logger
from bev.vocab import Tlp
from services.collectors.collection import CollectionRequest
from services.collectors.observables import Observable
from services.collectors.pauses import CollectorPaused, Pauses, redis_url
from services.collectors.settings import CollectorsConfig, Settings

log = get_logger(__name__)

COLLECT_TASK = "bev.collectors.collect"
POLL_TASK = "bev.collectors.poll_sources"


@dataclass(frozen=True)
class CollectJob:
    collector: str
    target_type: str
    target: str
    investigation_id: str = ""
    opsec: bool = False
    tlp: Tlp = Tlp.CLEAR  # JSON (Celery) carries the label; it is read back into its Tlp
    confidence: int = 0
    # Distinguishes deliberate re-runs (a feed poll per interval); equal jobs are one job.
    run_key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tlp", Tlp(self.tlp))

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def broker_url(config: CollectorsConfig, read_secret: Callable[[str], Mapping[str, str]]) -> str:
    return redis_url(config, read_secret)  # the Redis that also keeps collectors' pauses


def create_app(settings: Settings, read_secret: Callable[[str], Mapping[str, str]]) -> Celery:
    """The Celery app with BEV's tasks; secrets are read here, once, in the worker or beat process."""
    config = settings.collectors
    url = broker_url(config, read_secret)
    app = Celery("bev-collectors", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds only the task it runs; the rest stay queued
        task_serializer="json",
        accept_content=["json"],
        result_expires=config.celery.result_expires_s,
        broker_connection_retry_on_startup=True,
        # How long an unacknowledged task (its worker died) waits before Redis hands it out again,
        # and how often workers look for such tasks: kombu's default sweep is every 10 s x 10 polls
        # (~100 s), which would hold a task long past a short visibility timeout. Sweep at a
        # third of the timeout (1-10 s), on every poll.
        broker_transport_options={
            "visibility_timeout": config.celery.visibility_timeout_s,
            "unacked_restore_interval": max(1, min(10, int(config.celery.visibility_timeout_s / 3))),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        beat_schedule={
            f"poll-{source.name}": {"task": POLL_TASK, "schedule": source.interval_s, "args": (source.name,)}
            for source in [*config.feeds, *config.taxii]
        },
    )
    secrets_cache: dict[str, Mapping[str, str]] = {}

    def cached_secret(name: str) -> Mapping[str, str]:
        if name not in secrets_cache:
            secrets_cache[name] = read_secret(name)
        return secrets_cache[name]

    # shared=False: Celery otherwise adds a task to every app made later in the process (tests make
    # several), and a later app could run an earlier one's closure over its config.
    @app.task(name=COLLECT_TASK, bind=True, shared=False)
    def collect(task: Any, job: dict[str, Any]) -> dict[str, Any]:
        return asyncio.run(run_collect(config, cached_secret, CollectJob(**job)))

    @app.task(name=POLL_TASK, shared=False)
    def poll_source(name: str) -> str:
        for source, collector in [*((s, "feed") for s in config.feeds), *((s, "taxii") for s in config.taxii)]:
            if source.name == name:
                bucket = int(time.time() // source.interval_s)  # one run per source per interval
                job = CollectJob(collector, "url", source.url, tlp=source.tlp,
                                 run_key=f"{name}:{bucket}")
                collect.delay(asdict(job))
                return job.key
        raise ValueError(f"no configured feed or TAXII source named {name!r}")

    return app


async def run_collect(config: CollectorsConfig, read_secret: Callable[[str], Mapping[str, str]],
                      job: CollectJob) -> dict[str, Any]:
    """Run one job unless it already completed or its collector is paused; record its completion once."""
    # Imported here: the servicer module pulls in the RPC stack, which beat never needs.
    from services.collectors.servicer import open_collection

    pauses = Pauses.from_url(broker_url(config, read_secret))
    try:
        collection = await open_collection(config, lambda name: dict(read_secret(name)), pauses=pauses)
    except BaseException:
        await pauses.close()  # the collection closes it from here on
        raise
    try:
        done = await collection.observations.finished_task(job.key)
        if done is not None:
            return {"key": job.key, "observations": done, "already_done": True}
        request = CollectionRequest(job.collector, Observable(job.target_type, job.target), job.investigation_id,
                                    job.opsec, job.tlp, job.confidence)
        count = 0
        try:
            async for _ in collection.run(request):
                count += 1
        except CollectorPaused as paused:
            log.warning("collection task skipped: its collector is paused", task_key=job.key,
                        collector=job.collector, target=job.target, paused=str(paused))
            return {"key": job.key, "observations": 0, "already_done": False, "skipped": str(paused)}
        first = await collection.observations.record_finished_task(job.key, COLLECT_TASK, count)
        return {"key": job.key, "observations": count, "already_done": not first}
    finally:
        await collection.close()
