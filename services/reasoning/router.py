"""Picks a backend per request: by tier, health, load and session affinity, with failover.

Order of candidates for a request of tier T: T's healthy backends (the session's backend first
while it is healthy: its prefix cache is warm; then least loaded), then, only if every backend of T
is down, the next lower tier's, and so on. A connect error, 5xx or timeout marks the backend down
(the health probe brings it back) and moves the request on, counted as a failover. A streamed
answer fails over only before its first token: after that the caller has text it cannot take back.

A drained backend (DrainBackend: monitoring takes it out of this replica's routing for a while)
counts as down for new requests, so its tier falls back as when it is down; those in flight finish.
The drain ends by itself at its time.

Backpressure: each backend has `max_in_flight` slots and a queue of `max_queued`; when every
backend of the serving tier is full the request ends with RESOURCE_EXHAUSTED at once. A full tier
does not spill into a lower one (that would answer a "powerful" request with a tiny model).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from bev.rpc import RpcError, StatusCode
from bev.telemetry import get_logger
from bev.vocab import Tier, UnknownTier
from services.reasoning import metrics
from services.reasoning.backends import (
    Backend,
    BackendFailed,
    BackendFull,
    BackendRejected,
    ChatParams,
    Completion,
    Delta,
)

log = get_logger(__name__)


@dataclass
class Routed:
    """Where a request was served."""

    backend: Backend
    fell_back: bool  # served by a lower tier than asked


class Router:
    def __init__(self, backends: Iterable[Backend], default_tier: Tier | str,
                 affinity_sessions: int = 10_000) -> None:
        self.backends = list(backends)
        self.default_tier = Tier.parse(default_tier)
        self._affinity: OrderedDict[str, str] = OrderedDict()
        self._affinity_limit = affinity_sessions
        self.failovers = 0
        self.tier_fallbacks = 0

    # -- choosing -------------------------------------------------------------------------------

    def tier(self, tier: Tier | str = "") -> Tier:
        """The tier a request asks for: a Tier or its label; empty = the default tier."""
        if isinstance(tier, Tier):
            return tier
        if not tier:
            return self.default_tier
        try:
            return Tier.parse(tier)
        except UnknownTier as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def _serving(self, tier: Tier, model: str) -> list[Backend]:
        return [b for b in self.backends if b.tier == tier and (not model or model in (b.config.model, b.name))]

    def candidates(self, tier: Tier | str, session_id: str = "", model: str = "") -> list[list[Backend]]:
        """Healthy, undrained backends per tier, best first: the asked tier, then lower ones."""
        pinned = self._affinity.get(session_id) if session_id else None
        plan: list[list[Backend]] = []
        for each in self.tier(tier).and_lower():
            ready = [b for b in self._serving(each, model) if b.routable()]
            ready.sort(key=lambda b: (b.name != pinned, b.load(), b.requests))
            plan.append(ready)
        return plan

    def _remember(self, session_id: str, backend: Backend) -> None:
        if not session_id:
            return
        self._affinity[session_id] = backend.name
        self._affinity.move_to_end(session_id)
        while len(self._affinity) > self._affinity_limit:
            self._affinity.popitem(last=False)

    def pinned(self, session_id: str) -> str | None:
        return self._affinity.get(session_id)

    def _failed(self, backend: Backend, error: BackendFailed) -> None:
        backend.failures += 1
        backend.mark_down(str(error))
        self.failovers += 1
        labels = {"tier": backend.tier, "backend": backend.name}
        metrics.FAILURES.labels(**labels).inc()
        metrics.FAILOVERS.labels(**labels).inc()

    def _unavailable(self, tier: Tier, model: str, tried: list[tuple[Backend, str]]) -> RpcError:
        lower = tier.and_lower()
        configured = [b for t in lower for b in self._serving(t, model)]
        what = f"tier {tier}" + (" or lower" if len(lower) > 1 else "") + (f" with model {model!r}" if model else "")
        if not configured:
            return RpcError(StatusCode.UNAVAILABLE, f"no backend is configured for {what}")
        errors = dict((b.name, reason) for b, reason in tried)
        causes = "; ".join(f"{b.name}: {errors.get(b.name) or b.drain_text() or b.last_error or 'down'}"
                           for b in configured)
        return RpcError(StatusCode.UNAVAILABLE, f"nothing can serve {what}: {causes}")

    def _exhausted(self, tier: Tier, full: list[Backend]) -> RpcError:
        metrics.REJECTED.labels(tier=tier).inc()
        limits = ", ".join(f"{b.name} {b.in_flight}+{b.queued}" for b in full)
        return RpcError(StatusCode.RESOURCE_EXHAUSTED,
                        f"every {tier}-tier backend is at its queue limit (in flight+queued: {limits}); retry later")

    def _plan(self, tier: Tier, session_id: str, model: str) -> Iterable[tuple[Tier, list[Backend]]]:
        return zip(tier.and_lower(), self.candidates(tier, session_id, model), strict=True)

    def _served(self, asked: Tier, backend: Backend, session_id: str) -> Routed:
        self._remember(session_id, backend)
        fell_back = backend.tier != asked
        if fell_back:
            self.tier_fallbacks += 1
            metrics.TIER_FALLBACKS.labels(from_tier=asked, to_tier=backend.tier).inc()
        return Routed(backend, fell_back)

    # -- draining -------------------------------------------------------------------------------------

    def drain(self, name: str, seconds: float, reason: str) -> Backend:
        """Take backend `name` out of routing for `seconds` (0 = put it back now)."""
        backend = next((b for b in self.backends if b.name == name), None)
        if backend is None:
            known = ", ".join(b.name for b in self.backends) or "none"
            raise RpcError(StatusCode.NOT_FOUND, f"no backend named {name!r}; known: {known}")
        if not math.isfinite(seconds) or seconds < 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"seconds must be 0 (undrain) or more, not {seconds}")
        backend.drain(seconds, reason)
        if seconds:
            log.warning("backend drained", backend=name, tier=backend.tier, seconds=seconds, reason=reason)
        else:
            log.info("backend undrained", backend=name, tier=backend.tier)
        return backend

    # -- serving ----------------------------------------------------------------------------------

    async def complete(self, params: ChatParams, tier: Tier | str = "", session_id: str = "",
                       model: str = "") -> tuple[Completion, Routed]:
        """Serve `params` at `tier` (a Tier or its label; empty = the default tier) or lower."""
        asked = self.tier(tier)
        tried: list[tuple[Backend, str]] = []
        for each_tier, backends in self._plan(asked, session_id, model):
            full: list[Backend] = []
            for backend in backends:
                if not backend.routable():  # went down or was drained while an earlier candidate was tried
                    continue
                try:
                    async with backend.slot():
                        result = await backend.complete(params)
                except BackendFull:
                    full.append(backend)
                    continue
                except BackendFailed as exc:
                    self._failed(backend, exc)
                    tried.append((backend, str(exc)))
                    continue
                except BackendRejected as exc:
                    raise RpcError(StatusCode.INVALID_ARGUMENT, f"{backend.name} refused the request: {exc}") from exc
                return result, self._served(asked, backend, session_id)
            if full:
                raise self._exhausted(each_tier, full)
        raise self._unavailable(asked, model, tried)

    async def stream(self, params: ChatParams, tier: Tier | str = "", session_id: str = "",
                     model: str = "") -> AsyncIterator[tuple[Delta, Routed]]:
        asked = self.tier(tier)
        tried: list[tuple[Backend, str]] = []
        for each_tier, backends in self._plan(asked, session_id, model):
            full: list[Backend] = []
            for backend in backends:
                if not backend.routable():
                    continue
                routed: Routed | None = None
                started = time.perf_counter()
                first_at = 0.0
                try:
                    async with backend.slot():
                        async for delta in backend.stream(params):
                            if routed is None:
                                first_at = time.perf_counter()
                                routed = self._served(asked, backend, session_id)
                                metrics.TIME_TO_FIRST_TOKEN.labels(tier=backend.tier, backend=backend.name).observe(
                                    first_at - started)
                            if delta.finish_reason:
                                self._observe_decode(backend, delta.completion_tokens, first_at)
                            yield delta, routed
                except BackendFull:
                    full.append(backend)
                    continue
                except BackendFailed as exc:
                    self._failed(backend, exc)
                    if routed is not None:
                        raise RpcError(StatusCode.UNAVAILABLE,
                                       f"{backend.name} failed in the middle of the answer: {exc}") from exc
                    tried.append((backend, str(exc)))
                    continue
                except BackendRejected as exc:
                    raise RpcError(StatusCode.INVALID_ARGUMENT, f"{backend.name} refused the request: {exc}") from exc
                return
            if full:
                raise self._exhausted(each_tier, full)
        raise self._unavailable(asked, model, tried)

    @staticmethod
    def _observe_decode(backend: Backend, tokens: int, first_at: float) -> None:
        seconds = time.perf_counter() - first_at
        if tokens > 1 and seconds > 0:
            metrics.DECODE_RATE.labels(tier=backend.tier, backend=backend.name).observe((tokens - 1) / seconds)

    # -- health -------------------------------------------------------------------------------------

    async def probe_all(self) -> None:
        await asyncio.gather(*(backend.probe() for backend in self.backends))

    async def probe_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.probe_all()
            except Exception:  # a bug in one round must not end probing: backends would stay down
                log.exception("probe round failed")
