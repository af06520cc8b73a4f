"""Paused collectors, shared by every collectors replica and Celery worker through Redis.

A pause is one key per collector, `bev:collectors:paused:<name>`, holding JSON {until, reason, by}
and expiring at `until` (Redis's TTL), so a pause ends by itself on every process at once; resuming
deletes the key. Checking a collector before a run costs one GET.

Redis is where pauses live, not a dependency of collection: when it cannot be reached the check
fails open (the collector runs, with a warning), so an outage of Redis never stops collection.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from bev.telemetry import get_logger
from services.collectors.errors import CollectorError
from services.collectors.settings import CollectorsConfig

log = get_logger(__name__)

KEY_PREFIX = "bev:collectors:paused:"
# A pause check waits at most this long for Redis before the collector runs anyway.
REDIS_TIMEOUT_S = 3.0

PAUSED = Gauge("bev_collector_paused", "1 while the collector is paused (as this process last read it), else 0",
               ["collector"])

# Per collector, when its pause ends (unix time) as this process last read or set it: the gauge
# reads it at scrape time, so a pause that expired reads 0 without another look at Redis.
_known_until: dict[str, float] = {}
_exported: set[str] = set()


def _seen(name: str, until: float) -> None:
    _known_until[name] = until


def track(names: Iterable[str]) -> None:
    """Export the paused gauge (0 until a pause is seen) for each of these collectors. The service's
    process does; a Celery worker does not (prometheus_client's multiprocess mode, which its
    children count runs in, cannot read a gauge computed at scrape time)."""
    for name in names:
        if name not in _exported:
            _exported.add(name)
            PAUSED.labels(collector=name).set_function(partial(_paused_now, name))


def _paused_now(name: str) -> float:
    return 1.0 if _known_until.get(name, 0.0) > time.time() else 0.0


@dataclass(frozen=True)
class Pause:
    collector: str
    until: float  # unix time
    reason: str
    by: str

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.until, UTC).isoformat(timespec="seconds")
        return f"collector {self.collector} is paused until {until} by {self.by}: {self.reason}"


class CollectorPaused(CollectorError):
    """The collector is paused; str() names until when, by whom and why."""

    def __init__(self, pause: Pause) -> None:
        super().__init__(pause.describe())
        self.pause = pause


class PauseStoreUnavailable(Exception):
    """Redis did not answer a pause or resume (a check fails open instead)."""


def redis_url(config: CollectorsConfig, read_secret: Callable[[str], Mapping[str, str]]) -> str:
    """The Redis every collectors process shares: Celery's broker (the Vault secret "redis" unless set)."""
    return config.celery.broker_url or read_secret("redis")["url"]


class Pauses:
    """Pause, resume and read collectors' pauses in Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @classmethod
    def from_url(cls, url: str) -> Pauses:
        # Short timeouts and no retries: a check must not hold up collection while Redis is away.
        return cls(Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                                  retry=Retry(NoBackoff(), 0)))

    async def close(self) -> None:
        await self.redis.aclose()

    async def pause(self, collector: str, seconds: float, reason: str, by: str) -> Pause:
        """Pause `collector` for `seconds` (> 0) on every process; PauseStoreUnavailable if Redis is away."""
        pause = Pause(collector, time.time() + seconds, reason, by)
        value = json.dumps({"until": pause.until, "reason": reason, "by": by})
        try:
            await self.redis.set(KEY_PREFIX + collector, value, px=max(1, math.ceil(seconds * 1000)))
        except (RedisError, OSError) as exc:
            raise PauseStoreUnavailable(f"cannot pause {collector}: Redis: {exc}") from None
        _seen(collector, pause.until)
        return pause

    async def resume(self, collector: str) -> None:
        try:
            await self.redis.delete(KEY_PREFIX + collector)
        except (RedisError, OSError) as exc:
            raise PauseStoreUnavailable(f"cannot resume {collector}: Redis: {exc}") from None
        _seen(collector, 0.0)

    async def get(self, collector: str) -> Pause | None:
        """The collector's pause, or None; PauseStoreUnavailable if Redis is away."""
        try:
            raw = await self.redis.get(KEY_PREFIX + collector)
        except (RedisError, OSError) as exc:
            raise PauseStoreUnavailable(f"Redis: {exc}") from None
        pause = _parsed(collector, raw)
        _seen(collector, pause.until if pause else 0.0)
        return pause

    async def check(self, collector: str) -> Pause | None:
        """Whether a run of `collector` must not go ahead: one GET. Fails open: when Redis cannot
        be read the answer is None (run it) and a warning is logged, never an error to the caller."""
        try:
            return await self.get(collector)
        except PauseStoreUnavailable as exc:
            log.warning("pause check failed; the collector runs", collector=collector, error=str(exc))
            return None

    async def all(self, collectors: Iterable[str]) -> dict[str, Pause]:
        """The paused ones among `collectors` (one MGET); PauseStoreUnavailable if Redis is away."""
        names = list(collectors)
        if not names:
            return {}
        try:
            values = await self.redis.mget([KEY_PREFIX + name for name in names])
        except (RedisError, OSError) as exc:
            raise PauseStoreUnavailable(f"Redis: {exc}") from None
        paused: dict[str, Pause] = {}
        for name, raw in zip(names, values, strict=True):
            pause = _parsed(name, raw)
            _seen(name, pause.until if pause else 0.0)
            if pause is not None:
                paused[name] = pause
        return paused


def _parsed(collector: str, raw: Any) -> Pause | None:
    """The pause a key holds; None when absent, expired or unreadable (an unreadable one is logged:
    like an unreachable Redis, it must not stop collection)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        pause = Pause(collector, float(data["until"]), str(data.get("reason", "")), str(data.get("by", "")))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("unreadable pause ignored", collector=collector, value=str(raw)[:200], error=str(exc))
        return None
    return pause if pause.until > time.time() else None
