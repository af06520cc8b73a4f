"""Per-key limits in Redis, shared by every gateway replica: requests per hour (a token bucket:
a key may burst its whole hourly allowance, then gets one request per 3600/limit seconds) and
LLM tokens per UTC day (a counter the LLM routes add each call's usage to).

The bucket is one Lua script (EVALSHA), so replicas racing on one key never both take its last
request. A replica takes a key's requests from Redis in leases (1 for a key allowed up to 100 an
hour, up to 50 for busy keys: 1% of the hourly budget) and hands them out locally, so a busy key
costs one Redis round trip per lease, not per request. What a replica holds but has not handed
out (a lease or so) is the error the limit can have: requests never used, never extra ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from bev.access import ApiKey

# KEYS[1]: the bucket; ARGV: capacity, refill per second, now (s), most tokens wanted. Returns
# {tokens granted (0..wanted), tokens left (floor), seconds until one token is back}. The bucket
# expires once it would be full again.
_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then tokens = capacity; at = now end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = math.min(wanted, math.floor(tokens))
tokens = tokens - allowed
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
return {allowed, math.floor(tokens), tostring(wait)}
"""


class RateLimited(Exception):
    """A key is over a limit: the gateway answers 429 with these headers."""

    def __init__(self, message: str, retry_after_s: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = {**headers, "Retry-After": str(max(1, math.ceil(retry_after_s)))}


HEADER_NAMES = {b"ratelimit-limit": "RateLimit-Limit", b"ratelimit-remaining": "RateLimit-Remaining",
                b"ratelimit-reset": "RateLimit-Reset", b"ratelimit-policy": "RateLimit-Policy"}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float  # until the next request is allowed (0 when one is)
    reset_s: float        # until the bucket is full again

    def headers(self) -> dict[str, str]:
        """The IETF draft's RateLimit-* fields, on every answer to a key."""
        return {HEADER_NAMES[name]: value.decode() for name, value in self.raw_headers()}

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same fields as ASGI header pairs (lower-case names): what the guard adds to every
        answer, so built without a dict."""
        reset = math.ceil(self.reset_s if self.allowed else self.retry_after_s)
        return [(b"ratelimit-limit", b"%d" % self.limit), (b"ratelimit-remaining", b"%d" % self.remaining),
                (b"ratelimit-reset", b"%d" % reset), (b"ratelimit-policy", b"%d;w=3600" % self.limit)]


def _seconds_to_midnight(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


class Limits:
    def __init__(self, redis: Redis, prefix: str = "bev:limits") -> None:
        self.redis = redis
        self.prefix = prefix
        self._sha: str | None = None
        self._leased: dict[str, tuple[int, Decision]] = {}  # key id -> (requests in hand, the last answer)

    async def _bucket(self, key: str, capacity: int, rate: float, wanted: int) -> list[Any]:
        args = (capacity, rate, time.time(), wanted)
        if self._sha is None:
            self._sha = str(await self.redis.script_load(_BUCKET))
        try:
            return list(await self.redis.evalsha(self._sha, 1, key, *args))
        except NoScriptError:  # Redis restarted and lost its script cache
            self._sha = None
            return list(await self.redis.eval(_BUCKET, 1, key, *args))

    async def take_request(self, key: ApiKey) -> Decision:
        """Take one request from the key's hourly bucket (from this replica's lease when it has one)."""
        capacity = key.requests_per_hour
        in_hand, last = self._leased.get(key.id, (0, None))
        if in_hand > 0 and last is not None:
            self._leased[key.id] = (in_hand - 1, last)
            return Decision(True, capacity, last.remaining + in_hand - 1, 0.0, last.reset_s)
        rate = capacity / 3600.0
        lease = max(1, min(50, capacity // 100))
        granted, left, wait = await self._bucket(f"{self.prefix}:req:{key.id}", capacity, rate, lease)
        granted, remaining = int(granted), int(left)
        decision = Decision(allowed=granted > 0, limit=capacity, remaining=remaining,
                            retry_after_s=0.0 if granted else float(wait), reset_s=(capacity - remaining) / rate)
        if granted > 1:
            if len(self._leased) > 10_000:  # bounded; a dropped lease is requests never used
                self._leased.clear()
            # Add to what is in hand: requests that missed together each brought a lease back.
            self._leased[key.id] = (self._leased.get(key.id, (0, None))[0] + granted - 1, decision)
        return decision

    def _tokens_key(self, key: ApiKey, now: datetime) -> str:
        return f"{self.prefix}:tokens:{key.id}:{now:%Y%m%d}"

    async def check_tokens(self, key: ApiKey) -> None:
        """RateLimited when the key has used its LLM tokens for today (UTC)."""
        now = datetime.now(UTC)
        used = int(await self.redis.get(self._tokens_key(key, now)) or 0)
        if used >= key.tokens_per_day:
            wait = _seconds_to_midnight(now)
            raise RateLimited(
                f"key {key.id} has used its {key.tokens_per_day} LLM tokens for today (UTC)", wait,
                {"RateLimit-Limit": str(key.tokens_per_day), "RateLimit-Remaining": "0",
                 "RateLimit-Reset": str(math.ceil(wait)), "RateLimit-Policy": f"{key.tokens_per_day};w=86400"})

    async def spend_tokens(self, key: ApiKey, tokens: int) -> int:
        """Add a call's LLM tokens to the key's count for today; returns the day's total."""
        name = self._tokens_key(key, datetime.now(UTC))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(name, tokens)
            pipe.expire(name, 2 * 86400)
            total, _ = await pipe.execute()
        return int(total)
