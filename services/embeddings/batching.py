"""Dynamic micro-batching: concurrent embed calls share forward passes.

A transformer forward pass over 32 texts costs little more than over one, so single-text callers
arriving together are gathered into one batch (up to ``max_batch`` texts) and the rows are split
back to their callers. The first caller in a batch waits at most ``max_wait_s`` for company;
time spent waiting for the model itself (a previous batch still running) is not waiting for
company, so a batch whose oldest caller has already waited that long runs at once. One worker
task runs one forward pass at a time (torch already uses every core for one pass), always on the
same thread: OpenMP keeps a thread team per calling thread, and teams left idle on other threads
spin and burn CPU, so a rotating thread pool costs the service about twice the CPU per text. The
queue is bounded in texts: a call that would push it past ``max_queue`` fails with QueueFull.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
# texts -> (unit rows, tokens per text); blocking, run in a worker thread.
EncodeBatch = Callable[[list[str]], tuple[Vectors, list[int]]]


class QueueFull(Exception):
    """The model's queue holds max_queue texts already; the caller should back off."""


@dataclass
class Embedded:
    vectors: Vectors
    tokens: int


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[tuple[Vectors, list[int]]]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    rejected: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.texts / self.batches if self.batches else 0.0


class MicroBatcher:
    def __init__(self, encode: EncodeBatch, *, max_batch: int, max_wait_s: float, max_queue: int) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._pending: deque[_Pending] = deque()
        self._queued_texts = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self.stats = BatchStats()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def embed(self, texts: list[str]) -> Embedded:
        """Embed ``texts`` (in order) in shared batches; raises QueueFull when the queue is full."""
        if not texts:
            raise ValueError("texts is empty")
        if self._queued_texts + len(texts) > self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(
                f"embedding queue full: {self._queued_texts} texts waiting, at most {self.max_queue}; retry later"
            )
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        # A long request goes in max_batch slices so it interleaves with single-text callers
        # instead of holding the model for its whole length.
        parts: list[_Pending] = []
        for start in range(0, len(texts), self.max_batch):
            part = _Pending(texts[start : start + self.max_batch], loop.create_future())
            parts.append(part)
            self._pending.append(part)
            self._queued_texts += len(part.texts)
        self._arrived.set()
        results = await asyncio.gather(*(p.future for p in parts))
        vectors = results[0][0] if len(results) == 1 else np.vstack([v for v, _ in results])
        return Embedded(vectors, sum(sum(tokens) for _, tokens in results))

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="embedding-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for part in self._pending:
            if not part.future.done():
                part.future.cancel()
        self._pending.clear()
        self._queued_texts = 0
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            # Wait for company until the batch is full or the oldest caller's wait is up.
            deadline = self._pending[0].enqueued + self.max_wait_s
            while self._queued_texts < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            texts = [text for part in batch for text in part.texts]
            try:
                vectors, tokens = await asyncio.get_running_loop().run_in_executor(
                    self._model_thread, self._encode, texts
                )
            except Exception as exc:  # the callers get the model's error; the worker goes on
                for part in batch:
                    if not part.future.done():
                        part.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.texts += len(texts)
            offset = 0
            for part in batch:
                n = len(part.texts)
                if not part.future.done():  # a caller that gave up (deadline) is skipped
                    part.future.set_result((vectors[offset : offset + n], tokens[offset : offset + n]))
                offset += n

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._pending:
            part = self._pending[0]
            if part.future.done():  # cancelled while queued: drop without encoding
                self._pending.popleft()
                self._queued_texts -= len(part.texts)
                continue
            if batch and size + len(part.texts) > self.max_batch:
                break
            self._pending.popleft()
            self._queued_texts -= len(part.texts)
            batch.append(part)
            size += len(part.texts)
        return batch
