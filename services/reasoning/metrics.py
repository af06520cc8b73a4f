"""Prometheus metrics of the inference router, per tier and backend (served on the process's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_TIER_BACKEND = ["tier", "backend"]

REQUESTS = Counter("bev_reasoning_backend_requests_total", "Requests a backend answered", _TIER_BACKEND)
FAILURES = Counter(
    "bev_reasoning_backend_failures_total", "Connect errors, 5xx and timeouts per backend", _TIER_BACKEND
)
FAILOVERS = Counter(
    "bev_reasoning_failovers_total", "Requests moved to another backend after this one failed", _TIER_BACKEND
)
TIER_FALLBACKS = Counter(
    "bev_reasoning_tier_fallbacks_total", "Requests served by a lower tier because theirs was down",
    ["from_tier", "to_tier"],
)
REJECTED = Counter(
    "bev_reasoning_rejected_total", "Requests turned away because every queue was full", ["tier"]
)
QUEUE_DEPTH = Gauge("bev_reasoning_queue_depth", "Requests waiting for a slot on a backend", _TIER_BACKEND)
IN_FLIGHT = Gauge("bev_reasoning_in_flight", "Requests a backend is working on now", _TIER_BACKEND)
# Wall time with at least one request at the engine. For a one-slot engine (llama.cpp) that is the
# time the model computed: the floor under anything that waits for it (bench_swarm reads it).
BUSY_SECONDS = Counter(
    "bev_reasoning_backend_busy_seconds_total", "Seconds with at least one request in flight at the backend",
    _TIER_BACKEND,
)
HEALTHY = Gauge("bev_reasoning_backend_healthy", "1 when the backend answers, else 0", _TIER_BACKEND)
DRAINED = Gauge(
    "bev_reasoning_backend_drained", "1 while the backend is drained from this replica's routing, else 0",
    _TIER_BACKEND,
)
COMPLETION_TOKENS = Counter(
    "bev_reasoning_completion_tokens_total", "Tokens generated (rate() gives tokens/s)", _TIER_BACKEND
)
PROMPT_TOKENS = Counter("bev_reasoning_prompt_tokens_total", "Prompt tokens processed", _TIER_BACKEND)
DECODE_RATE = Histogram(
    "bev_reasoning_decode_tokens_per_second", "Per streamed request: tokens after the first / their time",
    _TIER_BACKEND, buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640, 1280),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "bev_reasoning_time_to_first_token_seconds", "From routing a streamed request to its first token",
    _TIER_BACKEND, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
