"""What the worker and beat entry points share: settings, logging and Vault, then the Celery app;
and their /metrics (process CPU and memory, data-dir disk space, and the worker's queue depths)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import redis
from celery import Celery
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from bev.runtime import EXIT_CONFIG, EXIT_DEPENDENCY
from bev.secrets import SecretsUnavailable, VaultSecrets
from bev.telemetry import configure_logging, get_logger, register_process_collectors, start_metrics_server
from services.collectors.settings import Settings
from services.collectors.tasks import create_app

log = get_logger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def celery_app(process: str) -> tuple[Settings, Celery]:
    """Settings and the logged-in Celery app, or exit with one line (the same codes services use)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "__".join(str(part) for part in first["loc"]).upper()
        print(f"bev-{process}: invalid setting BEV_{where}: {first['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(process, settings.telemetry)
    secrets = VaultSecrets(settings.vault, "collectors")  # the collectors service's AppRole
    try:
        secrets.login()
        # Read every secret a task may need now, while the single-use login is fresh.
        cached = {name: secrets.read(name) for name in ("redis", "postgres", settings.collectors.graph.backend)}
    except SecretsUnavailable as exc:
        print(f"bev-{process}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_DEPENDENCY) from None
    return settings, create_app(settings, lambda name: cached[name])


def serve_metrics(settings: Settings, process: str, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve `registry` on /metrics at settings.telemetry's host and port (the supervisor gives each
    worker its own), with the process collectors; returns the port, or exits with one line."""
    register_process_collectors(settings.data_dir, registry)
    telemetry = settings.telemetry
    try:
        port = start_metrics_server(telemetry.metrics_host, telemetry.metrics_port, registry)
    except OSError as exc:
        print(f"bev-{process}: cannot serve /metrics on {telemetry.metrics_host}:{telemetry.metrics_port}: {exc}",
              file=sys.stderr)
        raise SystemExit(EXIT_DEPENDENCY) from None
    log.info("serving metrics", metrics_port=port)
    return port


class CeleryQueueDepth(Collector):
    """bev_celery_queue_depth{queue}: tasks waiting in each broker queue (LLEN of its Redis list),
    read at scrape time. When Redis cannot answer, the gauge is left out of that scrape."""

    def __init__(self, broker_url: str, queues: Sequence[str]) -> None:
        self._queues = sorted(queues)
        # Short timeouts: a scrape must not hang on a stalled broker.
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)

    @classmethod
    def of(cls, app: Celery) -> CeleryQueueDepth | None:
        """The collector for `app`'s broker and queues; None for a broker that is not Redis."""
        url = str(app.conf.broker_url or "")
        if not url.startswith(REDIS_SCHEMES):
            return None
        return cls(url, list(app.amqp.queues))

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue in self._queues:
                    pipe.llen(queue)
                depths = pipe.execute()
        except redis.RedisError as exc:
            log.debug("celery queue depth unknown", error=str(exc))
            return
        family = self._family()
        for queue, depth in zip(self._queues, depths, strict=True):
            family.add_metric([queue], depth)
        yield family

    def close(self) -> None:
        self._redis.close()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("bev_celery_queue_depth", "Collection tasks waiting in a Celery broker queue",
                                 labels=["queue"])
