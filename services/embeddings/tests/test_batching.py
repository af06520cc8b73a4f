"""Micro-batching with the real MiniLM: concurrent callers share forward passes and each gets
exactly its own vector; a lone caller waits at most max_wait for company; the queue is bounded."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from services.embeddings.batching import MicroBatcher, QueueFull, Vectors
from services.embeddings.model import SentenceEmbedder

TOPICS = ["ransomware", "phishing kit", "botnet C2", "credential stuffing", "supply-chain implant"]


def _texts(n: int) -> list[str]:
    return [f"Report {i}: {TOPICS[i % len(TOPICS)]} activity seen from host {i * 7 % 251}." for i in range(n)]


class EncodeLog:
    """The real encode, recording each batch's size and when the model was called."""

    def __init__(self, embedder: SentenceEmbedder) -> None:
        self.embedder = embedder
        self.calls: list[tuple[float, int]] = []

    def __call__(self, texts: list[str]) -> tuple[Vectors, list[int]]:
        self.calls.append((time.monotonic(), len(texts)))
        return self.embedder.encode(texts, 32), self.embedder.token_counts(texts)


async def test_200_concurrent_callers_each_get_their_own_vector(minilm: SentenceEmbedder) -> None:
    texts = _texts(200)
    expected = minilm.encode(texts, batch_size=1)  # unbatched
    log = EncodeLog(minilm)
    batcher = MicroBatcher(log, max_batch=32, max_wait_s=0.02, max_queue=1000)
    try:
        results = await asyncio.gather(*(batcher.embed([t]) for t in texts))
    finally:
        await batcher.close()
    for i, result in enumerate(results):
        assert result.vectors.shape == (1, 384)
        np.testing.assert_allclose(result.vectors[0], expected[i], atol=1e-5)
        assert result.tokens == minilm.count_tokens([texts[i]])
    sizes = [n for _, n in log.calls]
    assert sum(sizes) == 200 and max(sizes) <= 32
    assert len(sizes) <= 200 / 8, f"callers were not batched: {sizes}"  # mostly full batches
    assert batcher.stats.batches == len(sizes) and batcher.stats.mean_batch_size > 8


async def test_long_request_is_split_and_reassembled_in_order(minilm: SentenceEmbedder) -> None:
    texts = _texts(70)
    log = EncodeLog(minilm)
    batcher = MicroBatcher(log, max_batch=32, max_wait_s=0.0, max_queue=1000)
    try:
        result = await batcher.embed(texts)
    finally:
        await batcher.close()
    np.testing.assert_allclose(result.vectors, minilm.encode(texts), atol=1e-5)
    assert [n for _, n in log.calls] == [32, 32, 6]


async def test_a_lone_caller_waits_at_most_max_wait_for_company(minilm: SentenceEmbedder) -> None:
    log = EncodeLog(minilm)
    batcher = MicroBatcher(log, max_batch=32, max_wait_s=0.05, max_queue=100)
    try:
        await batcher.embed(["warm-up"])
        log.calls.clear()
        started = time.monotonic()
        await batcher.embed(["a single text"])
    finally:
        await batcher.close()
    waited = log.calls[0][0] - started
    assert 0.045 <= waited < 0.05 + 0.1, f"waited {waited:.3f}s for company"  # + scheduling slack on a busy box


async def test_a_full_batch_does_not_wait(minilm: SentenceEmbedder) -> None:
    log = EncodeLog(minilm)
    batcher = MicroBatcher(log, max_batch=4, max_wait_s=5.0, max_queue=100)
    try:
        started = time.monotonic()
        await asyncio.gather(*(batcher.embed([t]) for t in _texts(4)))
    finally:
        await batcher.close()
    assert log.calls[0][0] - started < 0.5  # not the 5 s max wait: the batch was full


async def test_queue_is_bounded(minilm: SentenceEmbedder) -> None:
    batcher = MicroBatcher(EncodeLog(minilm), max_batch=32, max_wait_s=0.5, max_queue=4)
    try:
        waiting = asyncio.ensure_future(batcher.embed(_texts(3)))
        await asyncio.sleep(0)  # the three texts are queued, the worker waits for company
        with pytest.raises(QueueFull, match="queue full"):
            await batcher.embed(_texts(2))
        assert batcher.stats.rejected == 1
        assert (await waiting).vectors.shape == (3, 384)  # the admitted caller is still served
        assert (await batcher.embed(_texts(2))).vectors.shape == (2, 384)  # room again
    finally:
        await batcher.close()


async def test_a_cancelled_caller_is_dropped_from_the_queue(minilm: SentenceEmbedder) -> None:
    log = EncodeLog(minilm)
    batcher = MicroBatcher(log, max_batch=32, max_wait_s=0.1, max_queue=100)
    try:
        gone = asyncio.ensure_future(batcher.embed(["never mind"]))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await batcher.embed(["still here"])
    finally:
        await batcher.close()
    assert kept.vectors.shape == (1, 384)
    assert [n for _, n in log.calls] == [1]


async def test_model_errors_reach_the_callers_and_the_worker_goes_on(minilm: SentenceEmbedder) -> None:
    def encode(texts: list[str]) -> tuple[Vectors, list[int]]:
        if "boom" in texts:
            raise RuntimeError("model failed")
        return minilm.encode(texts), minilm.token_counts(texts)

    batcher = MicroBatcher(encode, max_batch=1, max_wait_s=0.0, max_queue=100)
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.embed(["boom"])
        assert (await batcher.embed(["fine"])).vectors.shape == (1, 384)
    finally:
        await batcher.close()


def test_bad_limits_are_refused(minilm: SentenceEmbedder) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(EncodeLog(minilm), max_batch=0, max_wait_s=0.01, max_queue=1)
