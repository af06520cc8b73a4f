"""Asynchronous, durable ingest: jobs in PostgreSQL, workers in every replica, events on JetStream.

SubmitIngest stores the upload and a job for it in one row of `corpus.ingest_jobs` (migration
0002) and answers; nothing acknowledged is lost when a process dies. Workers (``IngestWorkers``,
a few per instance) claim the oldest open job with ``select ... for update skip locked``, so
replicas share the work without taking the same job twice, and hold it under a lease they renew.
A job whose worker died (its lease ran out) is claimed again and resumed, at most
``ingest_max_attempts`` times in all: the document is recorded on the job in the transaction that
stores it, and ``chunks_done`` counts the chunks whose vectors are stored, so the next attempt
neither stores the document twice (the corpus also dedups by content hash) nor embeds again what
is indexed. Every change of a job is published on JetStream as
``bev.events.embeddings.ingest.<job_id>.<kind>`` (kinds: queued, started, progress, requeued,
completed, failed), JSON with the job's fields; the row stays the truth, events are best effort.

Errors in the document itself (unsupported, unreadable, too large) fail the job at once with one
line; any other error (storage or vector backend unavailable) puts it back in the queue after
``ingest_retry_delay_s`` until its attempts are spent, then fails it with that error. A failed job
leaves no partial document behind.

A job belongs to the team that submitted it ('' = an admin or another service) and carries its
document's label: GetIngestJob shows it only to a reader who may read that document.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bev.bus import events_prefix
from bev.media_types import UnsupportedMediaType
from bev.telemetry import get_logger
from bev.vocab import Tlp, UnknownTlp
from services.embeddings.corpus import Access, Corpus, DocumentTooLarge, IngestResult, NewDocument
from services.embeddings.documents import UnreadableDocument
from services.embeddings.metrics import INGEST_DEPTH_EVERY_S, QUEUE_DEPTH
from services.embeddings.settings import EmbeddingsConfig

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

log = get_logger(__name__)

# The document's own fault: retrying cannot help, so the job fails at once.
DOCUMENT_ERRORS = (UnsupportedMediaType, UnreadableDocument, DocumentTooLarge, UnknownTlp)
PROGRESS_INTERVAL_S = 0.5  # progress is written to the job (and published) at most this often
PURGE_INTERVAL_S = 600.0
EVENT_TIMEOUT_S = 2.0
EVENT_QUEUE = 1024  # events waiting for JetStream beyond this are dropped (the job row has the truth)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class IngestJob:
    id: str
    status: JobStatus
    filename: str
    media_type: str
    bytes: int
    chunks_done: int
    chunks_total: int
    document_id: str
    duplicate: bool
    title: str
    error: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    team: str  # '' = submitted by an admin or another service: the document is shared
    tlp: str  # the document's label

    def visible_to(self, access: Access) -> bool:
        return access.may_read(self.team, self.tlp)

    def to_event(self, kind: str) -> dict[str, Any]:
        return {
            "kind": f"ingest.{kind}", "time": time.time(), "job_id": self.id, "status": self.status.value,
            "filename": self.filename, "bytes": self.bytes, "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total, "document_id": self.document_id, "duplicate": self.duplicate,
            "title": self.title, "error": self.error, "attempts": self.attempts, "team": self.team,
        }


_COLUMNS = ("{t}id::text", "status", "filename", "media_type", "bytes", "chunks_done", "chunks_total",
            "coalesce(document_id::text, '')", "duplicate", "document_title", "error", "attempts", "created_at",
            "started_at", "updated_at", "finished_at", "team", "tlp")
_JOB = ", ".join(_COLUMNS).format(t="")
_RUNNING_MINE = "id = %(id)s and claimed_by = %(token)s and status = 'running'"


def _job(row: tuple[Any, ...]) -> IngestJob:
    return IngestJob(row[0], JobStatus(row[1]), row[2], row[3], int(row[4]), int(row[5]), int(row[6]), row[7],
                     bool(row[8]), row[9], row[10], int(row[11]), row[12], row[13], row[14], row[15], row[16],
                     row[17])


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: its state when claimed, the document to ingest, and the claim's token
    (every write a worker makes is conditional on still holding it)."""

    job: IngestJob
    document: NewDocument
    token: str

    def key(self) -> dict[str, str]:
        return {"id": self.job.id, "token": self.token}


class LeaseLost(Exception):
    """Another worker took the job over (this one's lease ran out): stop without touching it."""


class JobStore:
    """The job rows. Every write by a worker is conditional on its claim, so a worker whose lease
    ran out cannot overwrite what the worker that took over does."""

    def __init__(self, pool: AsyncConnectionPool[Any], lease_s: float) -> None:
        self.pool = pool
        self.lease_s = lease_s

    async def submit(self, doc: NewDocument) -> IngestJob:
        """Store the job with its content; committed (durable) when this returns."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                f"insert into corpus.ingest_jobs (id, content, bytes, media_type, filename, title, uri, source, tlp, "
                f"investigation_id, collected_at, team) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                f"returning {_JOB}",
                (str(uuid.uuid4()), doc.content, len(doc.content), doc.media_type, doc.filename, doc.title, doc.uri,
                 doc.source, Tlp(doc.tlp).value, doc.investigation_id, doc.collected_at, doc.team),
            )).fetchone()
        assert row is not None
        return _job(row)

    async def get(self, job_id: str) -> IngestJob | None:
        """The job, whoever submitted it (see IngestJob.visible_to)."""
        if not _is_uuid(job_id):
            return None
        async with self.pool.connection() as conn:
            row = await (await conn.execute(f"select {_JOB} from corpus.ingest_jobs where id = %s", (job_id,))).fetchone()
        return _job(row) if row else None

    async def claim(self, worker: str) -> Claim | None:
        """Take the oldest job that is queued (and due) or whose worker's lease ran out."""
        token = f"{worker}:{uuid.uuid4().hex[:8]}"
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                f"update corpus.ingest_jobs j set status = 'running', claimed_by = %(token)s, "
                f"lease_until = now() + make_interval(secs => %(lease)s), attempts = j.attempts + 1, "
                f"started_at = coalesce(j.started_at, now()), updated_at = now() "
                f"from (select id from corpus.ingest_jobs "
                f"      where status in ('queued', 'running') and (lease_until is null or lease_until <= now()) "
                f"      order by created_at limit 1 for update skip locked) next "
                f"where j.id = next.id "
                f"returning {', '.join(_COLUMNS).format(t='j.')}, j.content, j.title, j.uri, j.source, "
                f"j.investigation_id, j.collected_at",
                {"token": token, "lease": self.lease_s},
            )).fetchone()
        if row is None:
            return None
        job = _job(row[:len(_COLUMNS)])
        content, title, uri, source, investigation_id, collected_at = row[len(_COLUMNS):]
        document = NewDocument(content=bytes(content), media_type=job.media_type, filename=job.filename, title=title,
                               uri=uri, source=source, collected_at=collected_at, tlp=Tlp(job.tlp),
                               investigation_id=investigation_id, team=job.team)
        return Claim(job, document, token)

    async def queued(self) -> int:
        """How many jobs wait for a worker (not counting those being worked on)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "select count(*) from corpus.ingest_jobs where status = 'queued'")).fetchone()
        return int(row[0]) if row else 0

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when the job is no longer this claim's."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"update corpus.ingest_jobs set lease_until = now() + make_interval(secs => %(lease)s) "
                f"where {_RUNNING_MINE}", {**claim.key(), "lease": self.lease_s})
        return int(cursor.rowcount) == 1

    async def record_document(self, conn: AsyncConnection[Any], claim: Claim, document_id: str, chunks: int) -> None:
        """Inside the transaction that stores the document: it is this job's (LeaseLost rolls it back)."""
        cursor = await conn.execute(
            f"update corpus.ingest_jobs set document_id = %(document)s, chunks_total = %(chunks)s, chunks_done = 0, "
            f"updated_at = now() where {_RUNNING_MINE}", {**claim.key(), "document": document_id, "chunks": chunks})
        if cursor.rowcount != 1:
            raise LeaseLost(claim.job.id)

    async def progress(self, claim: Claim, done: int) -> IngestJob:
        return await self._update(claim, "chunks_done = greatest(chunks_done, %(done)s)", done=done)

    async def complete(self, claim: Claim, result: IngestResult) -> IngestJob:
        return await self._update(
            claim,
            "status = 'completed', document_id = %(document)s, duplicate = %(duplicate)s, chunks_done = %(chunks)s, "
            "chunks_total = %(chunks)s, document_title = %(title)s, error = '', content = ''::bytea, claimed_by = '', "
            "lease_until = null, finished_at = now()",
            document=result.document_id, duplicate=result.duplicate, chunks=result.chunks, title=result.title,
        )

    async def requeue(self, claim: Claim, error: str, delay_s: float) -> IngestJob:
        """Back to the queue after a failed attempt, due again in ``delay_s``."""
        return await self._update(
            claim, "status = 'queued', claimed_by = '', error = %(error)s, "
                   "lease_until = now() + make_interval(secs => %(delay)s)", error=error, delay=delay_s)

    async def release(self, claim: Claim) -> None:
        """Give the job back untouched (this instance is stopping): due at once, the attempt not counted."""
        async with self.pool.connection() as conn:
            await conn.execute(
                f"update corpus.ingest_jobs set status = 'queued', claimed_by = '', lease_until = null, "
                f"attempts = greatest(attempts - 1, 0), updated_at = now() where {_RUNNING_MINE}", claim.key())

    async def fail(self, claim: Claim, error: str) -> tuple[IngestJob, str]:
        """Mark the job failed and delete the document it had stored (not one it found stored):
        one transaction. Returns the job and the id of the deleted document ("" if none)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                f"select coalesce(document_id::text, ''), duplicate from corpus.ingest_jobs where {_RUNNING_MINE} "
                f"for update", claim.key())).fetchone()
            if row is None:
                raise LeaseLost(claim.job.id)
            partial = row[0] if row[0] and not row[1] else ""
            if partial:
                await conn.execute("delete from corpus.documents where id = %s", (partial,))
            updated = await (await conn.execute(
                f"update corpus.ingest_jobs set status = 'failed', error = %(error)s, document_id = null, "
                f"duplicate = false, chunks_done = 0, content = ''::bytea, claimed_by = '', lease_until = null, "
                f"finished_at = now(), updated_at = now() where {_RUNNING_MINE} returning {_JOB}",
                {**claim.key(), "error": error})).fetchone()
        assert updated is not None
        return _job(updated), partial

    async def purge(self, older_than_s: float) -> int:
        """Delete jobs that ended more than ``older_than_s`` ago."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "delete from corpus.ingest_jobs where finished_at < now() - make_interval(secs => %s)", (older_than_s,))
        return int(cursor.rowcount)

    async def _update(self, claim: Claim, assignments: str, **values: Any) -> IngestJob:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                f"update corpus.ingest_jobs set {assignments}, updated_at = now() where {_RUNNING_MINE} "
                f"returning {_JOB}", {**claim.key(), **values})).fetchone()
        if row is None:
            raise LeaseLost(claim.job.id)
        return _job(row)


class IngestEvents:
    """Publishes job events on JetStream in order, from one background task, so neither an upload
    nor a worker ever waits on the bus. Without a connection (tests, benches) it publishes nothing."""

    def __init__(self, nc: NatsClient | None, service: str = "embeddings") -> None:
        self._nc = nc
        self.prefix = f"{events_prefix(service)}.ingest"
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=EVENT_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failed = 0
        self.dropped = 0

    def publish(self, job: IngestJob, kind: str) -> None:
        if self._nc is None:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ingest-events")
        try:
            self._queue.put_nowait((f"{self.prefix}.{job.id}.{kind}", json.dumps(job.to_event(kind)).encode()))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        while True:
            subject, data = await self._queue.get()
            try:
                await js.publish(subject, data, timeout=EVENT_TIMEOUT_S)
                self.published += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no stream, bus down: the job row still says it all
                self.failed += 1
                if self.failed == 1 or self.failed % 100 == 0:
                    log.warning("ingest event not published", subject=subject, failures=self.failed,
                                error=f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    async def close(self, timeout_s: float = EVENT_TIMEOUT_S) -> None:
        """Publish what is queued (for up to ``timeout_s``), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            pass
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None


class IngestWorkers:
    """The ingest workers of one instance (``ingest_workers`` of them, started by ``start``)."""

    def __init__(self, store: JobStore, corpus: Corpus, events: IngestEvents, *, instance: str,
                 config: EmbeddingsConfig) -> None:
        self.store = store
        self.corpus = corpus
        self.events = events
        self.instance = instance
        self.config = config
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._held: dict[str, Claim] = {}  # token -> claim, while a worker works on it
        self._last_purge = 0.0

    def start(self) -> None:
        for n in range(self.config.ingest_workers):
            self._loops.append(asyncio.create_task(self._loop(f"{self.instance}-{n}"), name=f"ingest-worker-{n}"))
        if self.config.ingest_workers:  # an instance that works the queue reports its depth
            self._loops.append(asyncio.create_task(self._watch_depth(), name="ingest-queue-depth"))

    def wake(self) -> None:
        """A job was submitted here: idle workers look at once instead of at their next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Stop the workers; jobs they held go back to the queue at once for another instance."""
        held = list(self._held.values())
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        for claim in held:
            try:
                await self.store.release(claim)
            except Exception as exc:  # the lease runs out by itself; another worker resumes the job
                log.warning("could not release an ingest job", job_id=claim.job.id, error=_one_line(exc))

    async def run_one(self, worker: str) -> IngestJob | None:
        """Claim one job and work on it to its end; the job as it ended (None: there was no job,
        or another worker took it over)."""
        claim = await self.store.claim(worker)
        if claim is None:
            return None
        self._held[claim.token] = claim
        try:
            return await self._process(claim)
        finally:
            self._held.pop(claim.token, None)

    async def _loop(self, worker: str) -> None:
        while True:
            job: IngestJob | None = None
            try:
                if worker.endswith("-0") and time.monotonic() - self._last_purge > PURGE_INTERVAL_S:
                    self._last_purge = time.monotonic()
                    purged = await self.store.purge(self.config.ingest_job_retention_h * 3600)
                    if purged:
                        log.info("purged finished ingest jobs", jobs=purged)
                job = await self.run_one(worker)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL unreachable, say: the job's lease runs out, we poll again
                log.warning("ingest worker error", worker=worker, error=_one_line(exc))
            if job is None:  # nothing to do (or an error): wait for a submission or the next poll
                try:
                    await asyncio.wait_for(self._wake.wait(), self.config.ingest_poll_s)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def _watch_depth(self) -> None:
        """Keep bev_embeddings_queue_depth{queue="ingest"} current (absent while PostgreSQL cannot say)."""
        try:
            while True:
                try:
                    QUEUE_DEPTH.set_ingest(await self.store.queued())
                except Exception as exc:  # PostgreSQL unreachable: no figure rather than a stale one
                    QUEUE_DEPTH.set_ingest(None)
                    log.debug("ingest queue depth unknown", error=_one_line(exc))
                await asyncio.sleep(INGEST_DEPTH_EVERY_S)
        finally:
            QUEUE_DEPTH.set_ingest(None)

    async def _process(self, claim: Claim) -> IngestJob | None:
        job = claim.job
        self.events.publish(job, "started")
        log.info("ingest job started", job_id=job.id, attempt=job.attempts, filename=job.filename, bytes=job.bytes,
                 resume_at=job.chunks_done if job.document_id else None)
        if job.attempts > self.config.ingest_max_attempts:
            why = job.error or "each time its worker stopped before finishing (the lease ran out)"
            try:
                tries = job.attempts - 1
                return await self._fail(claim, f"gave up after {tries} attempt{'s' * (tries != 1)}: {why}")
            except LeaseLost:
                return None
        work = asyncio.create_task(self._ingest(claim), name=f"ingest-{job.id}")
        lease = asyncio.create_task(self._hold_lease(claim), name=f"ingest-lease-{job.id}")
        try:
            done, _ = await asyncio.wait({work, lease}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this worker is cancelled (shutdown): neither outlives it
            lease.cancel()
            work.cancel()
            await asyncio.gather(work, lease, return_exceptions=True)
        try:
            return await self._settle(claim, work, lost=work not in done or work.cancelled())
        except LeaseLost:  # taken over between the end of the work and its record
            log.warning("ingest job taken over by another worker (lease lost)", job_id=job.id)
            return None

    async def _settle(self, claim: Claim, work: asyncio.Task[IngestResult], *, lost: bool) -> IngestJob | None:
        """Record how an attempt ended: completed, failed, or queued again for another attempt."""
        job = claim.job
        if lost:
            raise LeaseLost(job.id)
        error = work.exception()
        if error is None:
            result = work.result()
            finished = await self.store.complete(claim, result)
            self.events.publish(finished, "completed")
            log.info("ingest job completed", job_id=job.id, document_id=result.document_id,
                     duplicate=result.duplicate, chunks=result.chunks)
            return finished
        if isinstance(error, LeaseLost):
            raise error
        if isinstance(error, DOCUMENT_ERRORS) or job.attempts >= self.config.ingest_max_attempts:
            return await self._fail(claim, _one_line(error))
        requeued = await self.store.requeue(claim, _one_line(error), self.config.ingest_retry_delay_s)
        self.events.publish(requeued, "requeued")
        log.warning("ingest attempt failed; job queued again", job_id=job.id, attempt=job.attempts,
                    error=_one_line(error))
        return requeued

    async def _ingest(self, claim: Claim) -> IngestResult:
        job, corpus = claim.job, self.corpus
        report = self._reporter(claim)
        if job.document_id:  # an earlier attempt stored the document: index the rest of its chunks
            found = await corpus.stored_chunks(job.document_id, job.chunks_done)
            if found is not None:
                meta, chunks = found
                await corpus.index_chunks(meta, chunks, report)
                return IngestResult(meta.id, False, meta.chunks, meta.title)
        read = await corpus.read(claim.document)
        existing = await corpus.find_duplicate(claim.document, read.extracted.content_hash)
        if existing is not None:
            return existing

        async def record(conn: AsyncConnection[Any], document_id: str, chunks: int) -> None:
            await self.store.record_document(conn, claim, document_id, chunks)

        stored = await corpus.store(read, claim.document, record)
        if stored.duplicate:
            return IngestResult(stored.meta.id, True, stored.meta.chunks, stored.meta.title)
        await report(0)
        await corpus.index_chunks(stored.meta, stored.chunks, report)
        return IngestResult(stored.meta.id, False, len(stored.chunks), stored.meta.title)

    def _reporter(self, claim: Claim) -> Callable[[int], Awaitable[None]]:
        last = 0.0

        async def report(done: int) -> None:
            nonlocal last
            if done and time.monotonic() - last < PROGRESS_INTERVAL_S:
                return
            last = time.monotonic()
            self.events.publish(await self.store.progress(claim, done), "progress")

        return report

    async def _hold_lease(self, claim: Claim) -> None:
        """Renew the lease every third of it; returns when the job is no longer this claim's."""
        while True:
            await asyncio.sleep(self.store.lease_s / 3)
            try:
                if not await self.store.renew(claim):
                    return
            except Exception as exc:  # keep trying: progress writes notice a lost lease too
                log.warning("could not renew an ingest job's lease", job_id=claim.job.id, error=_one_line(exc))

    async def _fail(self, claim: Claim, error: str) -> IngestJob:
        failed, partial = await self.store.fail(claim, error)
        if partial:
            await self.corpus.index.delete_document(partial)  # vectors outside PostgreSQL (Qdrant, Weaviate)
        self.events.publish(failed, "failed")
        log.warning("ingest job failed", job_id=failed.id, filename=failed.filename, error=error)
        return failed


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split())[:300]
    return text or type(cause).__name__


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
