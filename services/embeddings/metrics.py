"""bev_embeddings_queue_depth{queue}: the work waiting in this embeddings instance.

- `queue="batcher:<model>"`: texts queued at a model's micro-batcher (services/embeddings/batching.py),
  read from the live batchers at scrape time.
- `queue="ingest"`: ingest jobs waiting in the shared PostgreSQL queue (status queued), refreshed every
  INGEST_DEPTH_EVERY_S by an instance that runs ingest workers. The queue is the fleet's, so every such
  instance reports the same figure: aggregate it with max, not sum. Absent while the count fails.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.embeddings.batching import MicroBatcher

INGEST_DEPTH_EVERY_S = 5.0


class QueueDepth(Collector):
    def __init__(self) -> None:
        self._batchers: weakref.WeakKeyDictionary[MicroBatcher, str] = weakref.WeakKeyDictionary()
        self._ingest: int | None = None
        self._lock = threading.Lock()  # scrapes run on the metrics server's thread

    def watch(self, model: str, batcher: MicroBatcher) -> None:
        with self._lock:
            self._batchers[batcher] = model

    def set_ingest(self, jobs: int | None) -> None:
        self._ingest = jobs

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            batchers = list(self._batchers.items())
        by_model: dict[str, int] = {}
        for batcher, model in batchers:  # two instances of one model in a process (tests) add up
            by_model[model] = by_model.get(model, 0) + batcher.queued_texts
        for model, texts in sorted(by_model.items()):
            family.add_metric([f"batcher:{model}"], texts)
        ingest = self._ingest
        if ingest is not None:
            family.add_metric(["ingest"], ingest)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "bev_embeddings_queue_depth",
            "Work waiting: texts at a model's micro-batcher (batcher:<model>), ingest jobs queued fleet-wide (ingest)",
            labels=["queue"])


QUEUE_DEPTH = QueueDepth()
REGISTRY.register(QUEUE_DEPTH)
