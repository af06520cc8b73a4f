"""Labelled synthetic monitoring series with injected incidents, for the anomaly detector's test and bench.

    .venv/bin/python -m services.monitoring.tests.synthetic_series --write   # rewrites data/anomaly_series.json

40 series (10 per signal: latency, error_ratio, queue_depth, tokens_per_second), 24 h at a 15 s step
(5,760 points each), from a fixed seed. They imitate what Prometheus returns for the fleet's queries,
with what makes real series hard, none of which is an incident:

- latency: a per-route base (20 ms to 1.2 s), a daily cycle (±10-35 %), a drift over the day
  (-10 % to +50 %), autocorrelated lognormal noise (a slow minute stays slow for a few scrapes), and
  single-scrape spikes of x3-10 (GC pauses, a cold cache), one in five lasting two scrapes;
- error_ratio: errors / requests per scrape from a request rate with its own daily cycle: mostly 0,
  with rare isolated errors (one error in few requests is a ratio of several %), short clusters of
  a few errors, and no value at all when a quiet route served no request (rate() gives NaN);
- queue_depth: small integers from Poisson arrivals against a faster consumer, with bursts of 3-15
  jobs that drain within a few scrapes;
- tokens_per_second: noise around a per-backend mean (4-12 % CV), slower when busier (daily
  cycle), single-scrape dips (a long prompt's prefill), and idle stretches with no value;
- every series: scrapes that failed (a single missing point, 0.5 %) and target outages (a missing
  stretch of 1-10 minutes, up to two a day).

Incidents (1-3 on most series, none on some; never in the first two hours, at least 45 minutes
apart), each labelled [start, end]:

- latency: a step up of x3-10 for 2-10 minutes;
- error_ratio: the error probability jumps to 5-50 % for 2-10 minutes;
- queue_depth: the consumer slows to 0-50 % of the arrival rate for 5-20 minutes, so the backlog
  grows as a ramp; the incident ends when the backlog has drained back to its usual level;
- tokens_per_second: throughput drops to 10-40 % for 3-15 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

from services.monitoring.scoring import Incident, LabelledSeries, dump_series

SEED = 1306
STEP_S = 15.0
POINTS = 24 * 3600 // 15
T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()
PER_KIND = 10
DATA = Path(__file__).resolve().parent / "data" / "anomaly_series.json"

_ROUTES = ["gateway:GET /api/v1/investigations", "gateway:POST /api/v1/investigations", "gateway:POST /v1/chat/completions",
           "reasoning:Chat", "reasoning:Analyze", "embeddings:Search", "embeddings:Embed", "collectors:Collect",
           "swarm:StartInvestigation", "avatar:Speak"]
_QUEUES = ["collectors:celery", "collectors:celery.osint", "embeddings:batch", "embeddings:ingest",
           "reasoning:balanced/vllm-thanos", "reasoning:powerful/vllm-starlord", "reasoning:tiny/llama-local",
           "swarm:dbos", "collectors:celery.feeds", "reasoning:balanced/llama-thanos"]
_BACKENDS = ["balanced/vllm-thanos", "powerful/vllm-starlord", "tiny/llama-local", "balanced/llama-thanos",
             "powerful/vllm-starlord-2", "balanced/vllm-thanos-2", "tiny/llama-oracle1", "balanced/ollama-thanos",
             "powerful/llama-starlord", "tiny/llama-starlord"]


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation; Knuth's loop is slow and underflows for large means
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 60:
        return sum(rng.random() < p for _ in range(n))
    if n * p * (1 - p) > 9:
        return min(n, max(0, round(rng.gauss(n * p, math.sqrt(n * p * (1 - p))))))
    return min(n, poisson(rng, n * p))


def daily(i: int, phase: float) -> float:
    """The daily cycle, -1..1."""
    return math.sin(2 * math.pi * i / POINTS + phase)


def place_incidents(rng: random.Random, count: int, min_len: int, max_len: int) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) index ranges after the first two hours, at least 45 minutes apart."""
    placed: list[tuple[int, int]] = []
    while len(placed) < count:
        length = rng.randint(min_len, max_len)
        start = rng.randrange(2 * 240, POINTS - max_len - 4 * 240)
        if all(start + length + 180 < s or e + 180 < start for s, e in placed):
            placed.append((start, start + length))
    return sorted(placed)


def missing(rng: random.Random, values: list[float | None]) -> None:
    """Failed scrapes (single points) and target outages (1-10 minute stretches)."""
    for i in range(POINTS):
        if rng.random() < 0.005:
            values[i] = None
    for _ in range(rng.choice([0, 0, 1, 2])):
        start = rng.randrange(POINTS)
        for i in range(start, min(POINTS, start + rng.randint(4, 40))):
            values[i] = None


def latency(rng: random.Random, incidents: list[tuple[int, int]]) -> list[float | None]:
    base = math.exp(rng.uniform(math.log(0.02), math.log(1.2)))
    amplitude, phase, drift = rng.uniform(0.1, 0.35), rng.uniform(0, 2 * math.pi), rng.uniform(-0.1, 0.5)
    sigma, phi = rng.uniform(0.06, 0.2), rng.uniform(0.3, 0.7)
    factor = [1.0] * POINTS
    for start, end in incidents:
        step = rng.uniform(3, 10)
        for i in range(start, end):
            factor[i] = step
    values: list[float | None] = []
    noise, spike_left, spike = 0.0, 0, 1.0
    for i in range(POINTS):
        # AR(1) in log space, scaled so its stationary deviation is sigma.
        noise = phi * noise + rng.gauss(0, sigma * math.sqrt(1 - phi * phi))
        if spike_left == 0 and rng.random() < 0.003:
            spike_left, spike = (2 if rng.random() < 0.2 else 1), rng.uniform(3, 10)
        outlier = spike if spike_left else 1.0
        spike_left = max(0, spike_left - 1)
        level = base * (1 + amplitude * daily(i, phase)) * (1 + drift * i / POINTS)
        values.append(float(f"{level * math.exp(noise) * outlier * factor[i]:.4g}"))
    missing(rng, values)
    return values


def error_ratio(rng: random.Random, incidents: list[tuple[int, int]]) -> list[float | None]:
    rps = math.exp(rng.uniform(math.log(0.3), math.log(40)))
    amplitude, phase = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * math.pi)
    p_base = rng.uniform(0.0002, 0.003)
    p = [p_base] * POINTS
    for start, end in incidents:
        rate = rng.uniform(0.05, 0.5)
        for i in range(start, end):
            p[i] = rate
    values: list[float | None] = []
    cluster_left = 0
    for i in range(POINTS):
        requests = poisson(rng, rps * STEP_S * (1 + amplitude * daily(i, phase)))
        if requests == 0:
            values.append(None)  # no request in the window: rate()/rate() is NaN
            continue
        if cluster_left == 0 and rng.random() < 0.002:
            cluster_left = rng.randint(2, 3)  # a client retrying a bad request a few times
        errors = binomial(rng, requests, p[i])
        if cluster_left:
            errors = min(requests, errors + rng.randint(1, 3))
            cluster_left -= 1
        values.append(round(errors / requests, 5))
    missing(rng, values)
    return values


def queue_depth(rng: random.Random, incidents: list[tuple[int, int]]) -> tuple[list[float | None], list[tuple[int, int]]]:
    arrivals = rng.uniform(0.5, 6)
    capacity = arrivals * rng.uniform(1.5, 3) + 1
    slowdown = [1.0] * POINTS
    for start, end in incidents:
        left = rng.uniform(0, 0.5) * arrivals / capacity  # the consumer keeps this share of its speed
        for i in range(start, end):
            slowdown[i] = left
    depth = 0
    values: list[float | None] = []
    depths: list[int] = []
    for i in range(POINTS):
        incoming = poisson(rng, arrivals)
        if rng.random() < 0.01:
            incoming += rng.randint(3, 15)  # a batch enqueued at once
        depth += incoming
        depth -= min(depth, poisson(rng, capacity * slowdown[i]))
        depths.append(depth)
        values.append(float(depth))
    # The incident lasts until the backlog is back to its usual level, not just until the consumer recovers.
    usual = sorted(depths)[int(0.99 * POINTS)]
    labelled = []
    for start, end in incidents:
        while end < POINTS - 1 and depths[end] > usual:
            end += 1
        labelled.append((start, end))
    missing(rng, values)
    return values, labelled


def tokens_per_second(rng: random.Random, incidents: list[tuple[int, int]]) -> list[float | None]:
    mean = rng.uniform(15, 150)
    cv, load_cost, phase = rng.uniform(0.04, 0.12), rng.uniform(0, 0.2), rng.uniform(0, 2 * math.pi)
    factor = [1.0] * POINTS
    for start, end in incidents:
        drop = rng.uniform(0.1, 0.4)
        for i in range(start, end):
            factor[i] = drop
    values: list[float | None] = []
    for i in range(POINTS):
        busy = (1 + daily(i, phase)) / 2
        dip = rng.uniform(0.3, 0.6) if rng.random() < 0.003 else 1.0
        value = mean * (1 - load_cost * busy) * (1 + rng.gauss(0, cv)) * dip * factor[i]
        values.append(round(max(0.0, value), 1))
    # Idle stretches: no completion in the rate window, so no value (outside incidents).
    busy_at = set().union(*(range(s - 8, e + 8) for s, e in incidents))
    for _ in range(rng.choice([0, 1, 2, 3])):
        start = rng.randrange(POINTS)
        span = range(start, min(POINTS, start + rng.randint(40, 240)))
        if not busy_at.intersection(span):
            for i in span:
                values[i] = None
    missing(rng, values)
    return values


def generate(seed: int = SEED) -> list[LabelledSeries]:
    rng = random.Random(seed)
    out: list[LabelledSeries] = []
    kinds: list[tuple[str, list[str], int, int]] = [
        ("latency", _ROUTES, 8, 40), ("error_ratio", _ROUTES, 8, 40),
        ("queue_depth", _QUEUES, 20, 80), ("tokens_per_second", _BACKENDS, 12, 60),
    ]
    for kind, names, min_len, max_len in kinds:
        for name in names[:PER_KIND]:
            spans = place_incidents(rng, rng.choice([0, 1, 1, 2, 2, 3]), min_len, max_len)
            if kind == "queue_depth":
                values, spans = queue_depth(rng, spans)
            else:
                make: Callable[[random.Random, list[tuple[int, int]]], list[float | None]] = {
                    "latency": latency, "error_ratio": error_ratio, "tokens_per_second": tokens_per_second}[kind]
                values = make(rng, spans)
            key = f"{kind}:{name}"
            out.append(LabelledSeries(
                key=key, kind=kind, t0=T0, step_s=STEP_S, values=values,
                incidents=[Incident(key, T0 + s * STEP_S, T0 + (e - 1) * STEP_S) for s, e in spans],
            ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write services/monitoring/tests/data/anomaly_series.json")
    args = parser.parse_args()
    series = generate()
    incidents = sum(len(s.incidents) for s in series)
    print(f"{len(series)} series x {POINTS} points, {incidents} incidents", file=sys.stderr)
    if args.write:
        DATA.parent.mkdir(exist_ok=True)
        dump_series(series, DATA)
        print(f"wrote {DATA} ({DATA.stat().st_size:,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
