"""Asynchronous ingest: uploads answer 202 with a job once stored durably, workers (in any replica)
take jobs from PostgreSQL, a job whose worker died is resumed without storing the document twice,
failures end on the job with their error, and every step is an event on JetStream. Real
PostgreSQL+pgvector, nats-server with JetStream and MiniLM throughout."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import psycopg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from pgvector.psycopg import register_vector

from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer, Redis
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.testing.serving import serving_on_nats
from services.embeddings.chunking import chunk_text
from services.embeddings.corpus import Access, SearchMode
from services.embeddings.documents import normalise
from services.embeddings.jobs import IngestJob, JobStatus, LeaseLost
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.servicer import Embeddings, EmbeddingsDeps, assemble
from services.embeddings.settings import EmbeddingsConfig
from services.embeddings.vector_index import SearchFilter
from services.gateway.testing import gateway_on_free_port

EVENTS = "bev.events.embeddings.ingest"
WORDS = ("beacon", "loader", "implant", "exfiltration", "credential", "tunnel", "dropper", "persistence",
         "lateral", "phishing", "ransom", "wiper", "backdoor", "proxy", "stager", "keylogger")


@dataclass
class Service:
    client: EmbeddingsClient
    http: httpx.AsyncClient  # the gateway's HTTP API, with an admin's key
    servicer: Embeddings
    events: NatsClient
    dsn: str


async def ensure_events_stream(nc: NatsClient) -> None:
    """The fleet's supervisor creates BEV_EVENTS; here the test does."""
    js = nc.jetstream()
    try:
        await js.stream_info("BEV_EVENTS")
    except NotFoundError:
        await js.add_stream(name="BEV_EVENTS", subjects=["bev.events.>"])


async def _assemble(minilm: SentenceEmbedder, dsn: str, data_dir: Path, config: EmbeddingsConfig,
                    nc: NatsClient | None = None) -> Embeddings:
    models = ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)  # the session's MiniLM
    return await assemble(InstanceInfo(service="embeddings"), config, EmbeddingsDeps(dsn, data_dir, models, nc))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def service(
    nats_server: NatsServer, fresh_database: Callable[[], str], redis_server: Redis, minilm: SentenceEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    events = await nats.connect(nats_server.url)
    await ensure_events_stream(events)
    dsn = fresh_database()
    servicer = await _assemble(minilm, dsn, tmp_path_factory.mktemp("jobs"), EmbeddingsConfig(), events)
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60) as nc, \
            gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=60, trust_env=False) as http:
        yield Service(EmbeddingsClient.over_nats(nc), http, servicer, events, dsn)
    await events.close()


def _ctx(method: str) -> CallContext:
    return CallContext("embeddings", method, "nats", time.monotonic() + 30)


def _submit(content: bytes, filename: str, **fields: Any) -> embeddings_pb2.SubmitIngestRequest:
    return embeddings_pb2.SubmitIngestRequest(
        document=embeddings_pb2.DocumentInput(content=content, filename=filename, **fields))


async def _follow(http: httpx.AsyncClient, url: str, timeout_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll a job until it ends; the final job and every distinct state seen on the way."""
    deadline = time.monotonic() + timeout_s
    seen: list[dict[str, Any]] = []
    while True:
        reply = await http.get(url)
        assert reply.status_code == 200, reply.text
        job: dict[str, Any] = reply.json()
        if not seen or (job["status"], job["chunks_done"]) != (seen[-1]["status"], seen[-1]["chunks_done"]):
            seen.append(job)
        if job["status"] in ("completed", "failed"):
            return job, seen
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout_s}s: {job}"
        await asyncio.sleep(0.2)


async def _event_kinds(nc: NatsClient, job_id: str) -> dict[str, dict[str, Any]]:
    """The last event of each kind published for a job (JetStream keeps them on BEV_EVENTS)."""
    js = nc.jetstream()
    found: dict[str, dict[str, Any]] = {}
    for kind in ("queued", "started", "progress", "requeued", "completed", "failed"):
        try:
            message = await js.get_last_msg("BEV_EVENTS", f"{EVENTS}.{job_id}.{kind}")
        except NotFoundError:
            continue
        assert message.data is not None
        found[kind] = json.loads(message.data)
    return found


def _report(sections: int, seed: int = 0) -> str:
    """A long, varied report; every section holds a unique code word "cw<seed>x<section>z"."""
    rng = np.random.default_rng(seed)
    parts = []
    for section in range(sections):
        sentences = [
            f"Host h{rng.integers(100_000)}.corp.example ran the {WORDS[rng.integers(len(WORDS))]} "
            f"{WORDS[rng.integers(len(WORDS))]} at 10.{rng.integers(256)}.{rng.integers(256)}.{rng.integers(256)} "
            f"over port {rng.integers(1, 65_536)}."
            for _ in range(6)
        ]
        parts.append(f"Section {section} (code word cw{seed}x{section}z). " + " ".join(sentences))
    return "\n\n".join(parts)


async def test_upload_is_accepted_at_once_and_the_job_completes(service: Service) -> None:
    http = service.http
    text = ("# Juniper Gale notes\n\nJuniper Gale staged its tooling on a compromised build server and "
            "signed the implant with a stolen code-signing certificate. " * 3)
    uploaded = await http.post("/api/v1/documents", files={"file": ("juniper.md", text.encode(), "text/markdown")},
                               data={"source": "jobs", "tlp": "amber"})
    assert uploaded.status_code == 202, uploaded.text
    accepted = uploaded.json()
    assert accepted["status"] == "queued" and accepted["bytes"] == len(text.encode())
    assert accepted["filename"] == "juniper.md" and accepted["media_type"] == "text/markdown"
    assert uploaded.headers["location"] == accepted["url"] == f"/api/v1/documents/jobs/{accepted['job_id']}"
    job, _ = await _follow(http, accepted["url"], 60)
    assert job["status"] == "completed" and job["error"] == "" and job["attempts"] == 1, job
    assert job["duplicate"] is False and job["title"] == "Juniper Gale notes"
    assert job["chunks_done"] == job["chunks_total"] >= 1 and job["finished_at"] and job["started_at"]
    found = (await http.get("/api/v1/search", params={"q": "stolen code-signing certificate", "source": "jobs"})).json()
    assert found["hits"][0]["document_id"] == job["document_id"] and found["hits"][0]["tlp"] == "amber"

    # The same text at the same label is a duplicate (at a lower one it would be a copy of its own:
    # its uploader might not be cleared for the amber document).
    again = await http.post("/api/v1/documents", files={"file": ("copy.md", text.encode(), "text/markdown")},
                            data={"tlp": "amber"})
    assert again.status_code == 202
    copy, _ = await _follow(http, again.headers["location"], 60)
    assert copy["status"] == "completed" and copy["duplicate"] is True and copy["document_id"] == job["document_id"]

    events = await _event_kinds(service.events, accepted["job_id"])
    assert {"queued", "started", "progress", "completed"} <= set(events), sorted(events)
    assert events["queued"]["status"] == "queued" and events["queued"]["bytes"] == len(text.encode())
    completed = events["completed"]
    assert completed["kind"] == "ingest.completed" and completed["document_id"] == job["document_id"]
    assert completed["chunks_done"] == completed["chunks_total"] == job["chunks_total"]

    assert (await http.get("/api/v1/documents/jobs/00000000-0000-0000-0000-000000000000")).status_code == 404
    missing = await http.get("/api/v1/documents/jobs/not-a-job")
    assert missing.status_code == 404 and "no ingest job" in missing.json()["error"]


async def test_a_broken_document_fails_on_its_job_with_one_line(service: Service) -> None:
    http = service.http
    broken = await http.post("/api/v1/documents", files={"file": ("broken.pdf", b"%PDF-1.7\n\x00\x01 not really",
                                                                  "application/pdf")})
    assert broken.status_code == 202, broken.text
    job, _ = await _follow(http, broken.headers["location"], 60)
    assert job["status"] == "failed" and job["document_id"] == "" and job["finished_at"], job
    assert job["error"].startswith("cannot read the PDF") and "\n" not in job["error"]
    events = await _event_kinds(service.events, job["job_id"])
    assert events["failed"]["error"] == job["error"] and "completed" not in events

    garbled = await service.client.SubmitIngest(_submit(b"caf\xe9 \xff\xfe latin-1, not UTF-8", "notes.txt"))
    assert garbled.status == embeddings_pb2.INGEST_JOB_STATUS_QUEUED
    job, _ = await _follow(http, f"/api/v1/documents/jobs/{garbled.job_id}", 60)
    assert job["status"] == "failed" and job["error"] == "text is not valid UTF-8"

    # What the request alone shows to be wrong is refused before anything is queued.
    for request, message in ((_submit(b"\x89PNG\r\n", "picture.png"), "unsupported file type '.png'"),
                             (_submit(b"", "empty.txt"), "content is empty")):
        with pytest.raises(RpcError) as refused:
            await service.client.SubmitIngest(request)
        assert refused.value.code is StatusCode.INVALID_ARGUMENT and message in refused.value.message
    assert (await http.post("/api/v1/documents", files={"file": ("x.exe", b"MZ\x90\x00", "application/x-msdownload")})
            ).status_code == 415


async def _encode_rate(minilm: SentenceEmbedder, text: str) -> float:
    """Chunks/s of the model alone, at the service's batch size, on the first chunks of ``text``."""
    config = EmbeddingsConfig()
    sample = [c.text for c in chunk_text(normalise(text), config.chunk_chars, config.chunk_overlap)[:128]]
    began = time.monotonic()
    await asyncio.to_thread(minilm.encode, sample, config.batch_size)
    return len(sample) / (time.monotonic() - began)


@pytest.mark.slow
@pytest.mark.timeout(2400)
async def test_a_3_mb_upload_is_ingested_completely(service: Service, minilm: SentenceEmbedder) -> None:
    """The issue's case: a 2.9 MB upload used to end in 504 after 60 s with nothing stored.

    The model sets the pace: on 2 idle CPU cores MiniLM encodes ~30 chunks of 800 characters a
    second, so these 5,500 chunks take about three minutes (far longer when other jobs load the
    machine; seconds on a GPU). What the test holds the service to is the rest: storage and
    indexing add little to encoding alone (compared with encode before and after, since the load
    on a shared machine changes)."""
    sections = 5500
    text = _report(sections, seed=3)
    content = text.encode()
    assert 2_900_000 < len(content) < 3 * 1024 * 1024 - 4096, len(content)  # under the upload limit
    encode_before = await _encode_rate(minilm, text)
    began = time.monotonic()
    uploaded = await service.http.post("/api/v1/documents", files={"file": ("big.txt", content, "text/plain")},
                                       data={"source": "big"})
    accepted_s = time.monotonic() - began
    assert uploaded.status_code == 202, uploaded.text
    job, seen = await _follow(service.http, uploaded.headers["location"], 2200)
    wall_s = time.monotonic() - began
    assert job["status"] == "completed", job
    total = job["chunks_total"]
    chunks_per_s = total / wall_s
    # Progress was visible on the way: running, with chunks counted up.
    running = [s for s in seen if s["status"] == "running" and s["chunks_total"]]
    assert len(running) >= 3 and running[-1]["chunks_done"] > running[0]["chunks_done"]

    # All of the text is stored, chunked without gaps, and every chunk has its vector.
    document = await service.client.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=job["document_id"]))
    assert document.text == normalise(text) and document.chunks == total
    with psycopg.connect(service.dsn) as conn:
        spans = conn.execute("select start_offset, end_offset from corpus.chunks where document_id = %s order by seq",
                             (job["document_id"],)).fetchall()
        vectors = conn.execute("select count(*) from corpus.chunk_embeddings e join corpus.chunks c "
                               "on c.id = e.chunk_id where c.document_id = %s", (job["document_id"],)).fetchone()
    assert len(spans) == total and vectors == (total,)
    covered = 0
    for start, end in spans:
        assert not document.text[covered:start].strip(), f"text between {covered} and {start} is in no chunk"
        covered = max(covered, end)
    assert not document.text[covered:].strip()
    # ... and searchable, with citations that resolve, from the first section to the last.
    for section in (0, sections // 3, sections // 2, sections - 1):
        word = f"cw3x{section}z"
        found = await service.client.Search(embeddings_pb2.SearchRequest(
            query=word, k=3, mode=embeddings_pb2.SEARCH_MODE_TEXT, filters=embeddings_pb2.SearchFilters(sources=["big"])))
        hit = next(h for h in found.hits if word in h.excerpt)
        assert hit.document_id == job["document_id"] and document.text[hit.start : hit.end] == hit.excerpt

    encode_after = await _encode_rate(minilm, text)
    encode_per_s = min(encode_before, encode_after)
    print(f"\n3 MB ingest: {len(content)} bytes, {total} chunks, accepted in {accepted_s:.2f}s, "
          f"completed in {wall_s:.1f}s ({chunks_per_s:.1f} chunks/s); encode alone {encode_before:.1f} chunks/s "
          f"before, {encode_after:.1f} after; ratio {chunks_per_s / encode_per_s:.2f}")
    assert accepted_s < 10
    assert chunks_per_s >= 0.5 * encode_per_s, (chunks_per_s, encode_before, encode_after)


async def test_a_job_whose_worker_died_is_resumed_and_stored_once(
    fresh_database: Callable[[], str], minilm: SentenceEmbedder, tmp_path: Path,
) -> None:
    """Two replicas on one database; the first is killed mid-job (its task cancelled, nothing
    released, as when the process dies). Once its lease runs out the second resumes the job after
    the chunks already indexed, and the document is stored once."""
    # Workers driven by the test; small batches, so chunks are indexed 16 at a time (2 batches of 8).
    config = EmbeddingsConfig(ingest_workers=0, ingest_lease_s=2, batch_size=8, ingest_pipeline_depth=1)
    dsn = fresh_database()
    first = await _assemble(minilm, dsn, tmp_path / "a", config)
    second = await _assemble(minilm, dsn, tmp_path / "b", config)
    try:
        text = _report(80, seed=5)
        job = await first.SubmitIngest(_submit(text.encode(), "resume.txt", source="resume"), _ctx("SubmitIngest"))
        killed = asyncio.create_task(first.workers.run_one("first"))
        deadline = time.monotonic() + 120
        while (state := await first.jobs.get(job.job_id)) is not None and state.chunks_done < 16:
            assert time.monotonic() < deadline and not killed.done(), state
            await asyncio.sleep(0.05)
        claim = next(iter(first.workers._held.values()))
        killed.cancel()
        await asyncio.gather(killed, return_exceptions=True)
        mid = await first.jobs.get(job.job_id)
        assert mid is not None and mid.status is JobStatus.RUNNING and mid.document_id
        assert 0 < mid.chunks_done < mid.chunks_total, mid

        assert await second.workers.run_one("second") is None  # the dead worker's lease still runs
        await asyncio.sleep(2.2)
        embedded_before = second.models.default.batcher.stats.texts
        resumed = await second.workers.run_one("second")
        assert resumed is not None and resumed.status is JobStatus.COMPLETED, resumed
        assert resumed.attempts == 2 and resumed.document_id == mid.document_id and not resumed.duplicate
        assert resumed.chunks_done == resumed.chunks_total == mid.chunks_total
        embedded = second.models.default.batcher.stats.texts - embedded_before
        assert 0 < embedded <= mid.chunks_total - mid.chunks_done  # only what was not indexed yet

        with psycopg.connect(dsn) as conn:
            documents, chunks, vectors = conn.execute(
                "select (select count(*) from corpus.documents), (select count(*) from corpus.chunks), "
                "(select count(*) from corpus.chunk_embeddings)").fetchone() or (0, 0, 0)
        assert (documents, chunks, vectors) == (1, mid.chunks_total, mid.chunks_total)
        with pytest.raises(LeaseLost):  # the dead worker's claim is worth nothing now
            await first.jobs.progress(claim, 1)
        hits = await second.corpus.search("cw5x79z", 1, SearchFilter(), SearchMode.TEXT, access=Access())
        assert hits and "cw5x79z" in hits[0].excerpt
    finally:
        await first.close()
        await second.close()


async def test_each_chunk_gets_its_own_vector_whatever_order_the_model_saw_them_in(
    fresh_database: Callable[[], str], minilm: SentenceEmbedder, tmp_path: Path,
) -> None:
    """Chunks are embedded shortest first within a window (less padding); the vectors must still
    land on their own chunks, on the job path and the synchronous one alike."""
    config = EmbeddingsConfig(ingest_workers=0, batch_size=4, ingest_pipeline_depth=1, chunk_chars=200,
                              chunk_overlap=40)  # windows of 8 chunks
    dsn = fresh_database()
    servicer = await _assemble(minilm, dsn, tmp_path, config)
    rng = np.random.default_rng(2)
    paragraphs = [" ".join(f"{WORDS[rng.integers(len(WORDS))]}-{i}-{j}" for j in range(int(rng.integers(2, 30))))
                  for i in range(40)]
    try:
        await servicer.SubmitIngest(_submit("\n\n".join(paragraphs).encode(), "mixed.txt"), _ctx("SubmitIngest"))
        ended = await servicer.workers.run_one("w")
        assert ended is not None and ended.status is JobStatus.COMPLETED and ended.chunks_total > 16, ended
        synchronous = await servicer.Ingest(embeddings_pb2.IngestRequest(document=embeddings_pb2.DocumentInput(
            content="\n\n".join(reversed(paragraphs)).encode())), _ctx("Ingest"))
        for document_id in (ended.document_id, synchronous.document_id):
            with psycopg.connect(dsn) as conn:
                register_vector(conn)
                rows = conn.execute("select c.text, e.embedding from corpus.chunks c join corpus.chunk_embeddings e "
                                    "on e.chunk_id = c.id where c.document_id = %s order by c.seq",
                                    (document_id,)).fetchall()
            lengths = {len(text) for text, _ in rows}
            assert len(rows) > 16 and len(lengths) > 8  # chunks of many lengths, so the order was shuffled
            expected = minilm.encode([text for text, _ in rows], batch_size=1)
            np.testing.assert_allclose(np.stack([vector.to_numpy() for _, vector in rows]), expected, atol=1e-4)
    finally:
        await servicer.close()


async def test_replicas_share_the_queue_and_take_each_job_once(
    fresh_database: Callable[[], str], minilm: SentenceEmbedder, tmp_path: Path,
) -> None:
    config = EmbeddingsConfig(ingest_workers=2, ingest_poll_s=0.2)
    dsn = fresh_database()
    replicas = [await _assemble(minilm, dsn, tmp_path / name, config) for name in ("a", "b")]
    for replica in replicas:
        await replica.start()
    try:
        submitted = [await replicas[i % 2].SubmitIngest(
            _submit(f"Shared queue note {i}: actor {i} reused the {WORDS[i]} infrastructure.".encode(), f"n{i}.txt"),
            _ctx("SubmitIngest")) for i in range(8)]
        deadline = time.monotonic() + 120
        jobs: list[IngestJob | None] = []
        while time.monotonic() < deadline:
            jobs = [await replicas[0].jobs.get(s.job_id) for s in submitted]
            if all(j is not None and j.status is JobStatus.COMPLETED for j in jobs):
                break
            await asyncio.sleep(0.2)
        assert all(j is not None and j.status is JobStatus.COMPLETED and j.attempts == 1 for j in jobs), jobs
        assert len({j.document_id for j in jobs if j is not None}) == 8
    finally:
        for replica in replicas:
            await replica.close()


async def test_an_attempt_that_fails_is_retried_then_the_job_fails_without_a_partial_document(
    fresh_database: Callable[[], str], minilm: SentenceEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = EmbeddingsConfig(ingest_workers=0, ingest_max_attempts=2, ingest_retry_delay_s=0)
    dsn = fresh_database()
    servicer = await _assemble(minilm, dsn, tmp_path, config)
    try:
        async def vector_backend_down(*args: Any) -> None:
            raise RuntimeError("vector backend down:\n connection refused")

        monkeypatch.setattr(servicer.corpus.index, "upsert", vector_backend_down)
        job = await servicer.SubmitIngest(_submit(_report(3, seed=9).encode(), "retry.txt"), _ctx("SubmitIngest"))
        first = await servicer.workers.run_one("w")
        assert first is not None and first.status is JobStatus.QUEUED and first.attempts == 1
        assert first.error == "vector backend down: connection refused" and first.document_id  # kept for a resume
        last = await servicer.workers.run_one("w")
        assert last is not None and last.status is JobStatus.FAILED and last.attempts == 2
        assert last.error == "vector backend down: connection refused" and last.document_id == ""
        reply = await servicer.GetIngestJob(embeddings_pb2.GetIngestJobRequest(job_id=job.job_id), _ctx("GetIngestJob"))
        assert reply.status == embeddings_pb2.INGEST_JOB_STATUS_FAILED and reply.error == last.error
        assert await servicer.corpus.counts() == (0, 0)  # no document without its vectors
        assert await servicer.workers.run_one("w") is None  # a failed job is not taken again
    finally:
        await servicer.close()


async def test_a_job_whose_workers_keep_dying_fails_after_its_attempts(
    fresh_database: Callable[[], str], minilm: SentenceEmbedder, tmp_path: Path,
) -> None:
    config = EmbeddingsConfig(ingest_workers=0, ingest_lease_s=1, ingest_max_attempts=1)
    servicer = await _assemble(minilm, fresh_database(), tmp_path, config)
    try:
        job = await servicer.SubmitIngest(_submit(b"A document whose workers die.", "dies.txt"), _ctx("SubmitIngest"))
        dead = await servicer.jobs.claim("dead-worker")  # taken, then never renewed nor finished
        assert dead is not None and dead.job.id == job.job_id
        await asyncio.sleep(1.2)
        ended = await servicer.workers.run_one("w")
        assert ended is not None and ended.status is JobStatus.FAILED and ended.attempts == 2
        assert ended.error == "gave up after 1 attempt: each time its worker stopped before finishing (the lease ran out)"
    finally:
        await servicer.close()


def test_report_code_words_are_unique() -> None:
    text = _report(200, seed=1)
    assert len(set(re.findall(r"cw1x\d+z", text))) == 200
