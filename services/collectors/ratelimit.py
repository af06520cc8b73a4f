"""Per-key rate limits that queue callers for their slot instead of failing them."""

from __future__ import annotations

import asyncio
import time


class SlotLimiter:
    """At most `rate_per_s` calls per second per key; a caller over the rate waits for its slot."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def wait(self, key: str) -> None:
        if self.interval == 0.0:
            return
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(key, now))
            self._next[key] = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
