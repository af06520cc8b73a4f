"""One conformance suite for every vector backend: pgvector, Qdrant (local mode here; a server when
QDRANT_URL is set) and Weaviate (when WEAVIATE_URL is set; no Weaviate server runs on this machine).
Plus: pgvector and local Qdrant agree on the top-k of a fixed set, and HNSW recall vs exact search."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from services.embeddings.corpus import open_pool
from services.embeddings.model import SentenceEmbedder
from services.embeddings.schema import migrate
from services.embeddings.vector_index import (
    ChunkPayload,
    PgVectorIndex,
    QdrantIndex,
    SearchFilter,
    VectorIndex,
    WeaviateIndex,
)

MODEL = "all-MiniLM-L6-v2"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SENTENCES = [
    "APT29 used spearphishing emails with malicious ISO attachments.",
    "The ransomware encrypted file servers at a regional hospital.",
    "A botnet of compromised routers relayed the attacker's traffic.",
    "Credential stuffing hit the retailer's login page overnight.",
    "The supply-chain implant was hidden in a signed software update.",
    "Lazarus laundered stolen cryptocurrency through mixers.",
    "A watering-hole site served an exploit for the browser zero-day.",
    "Insiders exfiltrated design documents to a personal cloud drive.",
    "DNS tunnelling carried data out of the segmented network.",
    "The phishing kit relayed one-time passcodes in real time.",
    "Wiper malware destroyed the master boot records of workstations.",
    "The actor abused OAuth consent to read executives' mailboxes.",
]
QUERIES = ["phishing with attachments", "ransomware at a hospital", "stolen crypto laundering", "router botnet"]
TEAMS = ("", "", "team-a", "team-b")  # '' = the shared corpus


@dataclass
class Seeded:
    pool: AsyncConnectionPool[Any]
    chunks: list[ChunkPayload]


async def seed(pool: AsyncConnectionPool[Any], texts: list[str]) -> list[ChunkPayload]:
    """One document per text with varied provenance; returns the chunk payloads (ids are real rows)."""
    payloads = []
    for i, text in enumerate(texts):
        payloads.append(ChunkPayload(
            str(uuid.uuid4()), str(uuid.uuid4()), 0, len(text), ("feed-a", "feed-b", "upload")[i % 3],
            ("clear", "green", "amber")[i % 3], "inv-1" if i % 2 == 0 else "", T0 + timedelta(days=i),
            TEAMS[i % len(TEAMS)],
        ))
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "insert into corpus.documents (id, team, content_hash, title, source, media_type, tlp, investigation_id, "
            "collected_at, text) values (%s, %s, %s, %s, %s, 'text/plain', %s, %s, %s, %s)",
            [(c.document_id, c.team, uuid.uuid4().hex, f"doc {i}", c.source, c.tlp, c.investigation_id, c.collected_at,
              t) for i, (c, t) in enumerate(zip(payloads, texts, strict=True))],
        )
        await cur.executemany(
            "insert into corpus.chunks (id, document_id, seq, start_offset, end_offset, text) values (%s, %s, 0, 0, %s, %s)",
            [(c.chunk_id, c.document_id, len(t), t) for c, t in zip(payloads, texts, strict=True)],
        )
    return payloads


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(fresh_database: Callable[[], str]) -> AsyncIterator[Seeded]:
    dsn = fresh_database()
    migrate(dsn)
    pool = await open_pool(dsn)
    yield Seeded(pool, await seed(pool, SENTENCES))
    await pool.close()


BACKENDS = ["pgvector", "qdrant-local", "qdrant-server", "weaviate"]


@pytest_asyncio.fixture(params=BACKENDS, loop_scope="session")
async def backend(request: pytest.FixtureRequest, seeded: Seeded, tmp_path: Any) -> AsyncIterator[VectorIndex]:
    prefix = f"test_{uuid.uuid4().hex[:8]}"
    index: VectorIndex
    match request.param:
        case "pgvector":
            index = PgVectorIndex(seeded.pool)
        case "qdrant-local":
            index = QdrantIndex.open("", tmp_path / "qdrant", prefix=prefix)
        case "qdrant-server":
            if not os.environ.get("QDRANT_URL"):
                pytest.skip("QDRANT_URL is not set: no Qdrant server to test against")
            index = QdrantIndex.open(os.environ["QDRANT_URL"], prefix=prefix)
        case _:
            if not os.environ.get("WEAVIATE_URL"):
                pytest.skip("WEAVIATE_URL is not set: no Weaviate server runs on this machine")
            index = WeaviateIndex.open(os.environ["WEAVIATE_URL"], int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")),
                                       prefix=f"Bev{prefix}")
    await index.prepare(MODEL, 384)
    yield index
    await index.drop(MODEL)
    await index.close()


async def _load(index: VectorIndex, seeded: Seeded, minilm: SentenceEmbedder) -> np.ndarray:
    vectors = minilm.encode(SENTENCES)
    await index.upsert(MODEL, seeded.chunks, vectors)
    return vectors


async def test_search_finds_the_nearest_chunks(backend: VectorIndex, seeded: Seeded, minilm: SentenceEmbedder) -> None:
    vectors = await _load(backend, seeded, minilm)
    assert await backend.count(MODEL) == len(SENTENCES)
    await backend.prepare(MODEL, 384)  # idempotent
    query = minilm.encode(QUERIES)
    for q in query:
        hits = await backend.search(MODEL, q, 3, SearchFilter())
        exact = np.argsort(-(vectors @ q))[:3]
        assert [h.chunk_id for h in hits] == [seeded.chunks[i].chunk_id for i in exact]
        np.testing.assert_allclose([h.score for h in hits], (vectors @ q)[exact], atol=1e-4)


async def test_filters(backend: VectorIndex, seeded: Seeded, minilm: SentenceEmbedder) -> None:
    await _load(backend, seeded, minilm)
    q = minilm.encode(["malware"])[0]
    by_id = {c.chunk_id: c for c in seeded.chunks}

    async def found(filters: SearchFilter) -> list[ChunkPayload]:
        return [by_id[h.chunk_id] for h in await backend.search(MODEL, q, len(SENTENCES), filters)]

    assert {c.source for c in await found(SearchFilter(sources=["feed-a", "upload"]))} == {"feed-a", "upload"}
    assert {c.tlp for c in await found(SearchFilter(tlp=["amber"]))} == {"amber"}
    inv = await found(SearchFilter(investigation_id="inv-1"))
    assert len(inv) == len(SENTENCES) // 2 and all(c.investigation_id == "inv-1" for c in inv)
    window = await found(SearchFilter(collected_after=T0 + timedelta(days=3), collected_before=T0 + timedelta(days=6)))
    assert sorted(c.collected_at for c in window) == [T0 + timedelta(days=d) for d in (3, 4, 5)]
    both = await found(SearchFilter(sources=["feed-a"], tlp=["clear"], investigation_id="inv-1"))
    assert both and all((c.source, c.tlp, c.investigation_id) == ("feed-a", "clear", "inv-1") for c in both)
    assert await found(SearchFilter(sources=["nowhere"])) == []
    # What a reader of team-a sees: the shared corpus and its own team's chunks, never team-b's.
    readable = await found(SearchFilter(teams=["", "team-a"]))
    assert sorted(c.chunk_id for c in readable) == sorted(c.chunk_id for c in seeded.chunks if c.team != "team-b")
    assert {c.team for c in await found(SearchFilter(teams=["team-b"]))} == {"team-b"}
    capped = await found(SearchFilter(teams=["", "team-a"], tlp=["clear", "green"]))
    assert capped and all(c.team in ("", "team-a") and c.tlp in ("clear", "green") for c in capped)
    assert len(capped) == sum(c.team != "team-b" and c.tlp != "amber" for c in seeded.chunks)
    # A filter that leaves few chunks still returns k of them (filtered in the index, not after it).
    team_a = {c.chunk_id for c in seeded.chunks if c.team == "team-a"}
    hits = await backend.search(MODEL, q, len(team_a) - 1, SearchFilter(teams=["team-a"]))
    assert len(hits) == len(team_a) - 1 and {h.chunk_id for h in hits} <= team_a
    assert await found(SearchFilter(teams=["nobody"])) == []


async def test_upsert_replaces_and_delete_removes(backend: VectorIndex, seeded: Seeded, minilm: SentenceEmbedder) -> None:
    await _load(backend, seeded, minilm)
    first = seeded.chunks[0]
    other = minilm.encode(["completely unrelated: a recipe for lemon cake"])
    await backend.upsert(MODEL, [first], other)
    assert await backend.count(MODEL) == len(SENTENCES)
    top = await backend.search(MODEL, other[0], 1, SearchFilter())
    assert top[0].chunk_id == first.chunk_id and top[0].score == pytest.approx(1.0, abs=1e-4)
    if backend.name != "pgvector":  # pgvector rows go with their chunk rows (on delete cascade)
        await backend.delete_document(first.document_id)
        assert await backend.count(MODEL) == len(SENTENCES) - 1
        assert first.chunk_id not in {h.chunk_id for h in await backend.search(MODEL, other[0], 5, SearchFilter())}


async def test_pgvector_and_local_qdrant_agree_on_top_k(seeded: Seeded, minilm: SentenceEmbedder, tmp_path: Any) -> None:
    pg = PgVectorIndex(seeded.pool)
    qdrant = QdrantIndex.open("", tmp_path / "agree")
    try:
        for index in (pg, qdrant):
            await index.prepare(MODEL, 384)
            await index.upsert(MODEL, seeded.chunks, minilm.encode(SENTENCES))
        for q in minilm.encode(QUERIES + SENTENCES[:4]):
            pg_hits = await pg.search(MODEL, q, 5, SearchFilter())
            qd_hits = await qdrant.search(MODEL, q, 5, SearchFilter())
            assert [h.chunk_id for h in pg_hits] == [h.chunk_id for h in qd_hits]
            np.testing.assert_allclose([h.score for h in pg_hits], [h.score for h in qd_hits], atol=1e-4)
    finally:
        await pg.drop(MODEL)
        await qdrant.close()


def clustered_unit_vectors(n: int, dims: int, clusters: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Points scattered around random centres on the unit sphere, like embeddings of topical text."""
    centres = rng.standard_normal((clusters, dims)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dims)).astype(np.float32) / np.sqrt(dims)
    unit: np.ndarray = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


@pytest.mark.slow
async def test_hnsw_recall_against_exact_search(fresh_database: Callable[[], str]) -> None:
    dsn = fresh_database()
    migrate(dsn)
    pool = await open_pool(dsn)
    rng = np.random.default_rng(7)
    n, queries, k = 5000, 50, 10
    data = clustered_unit_vectors(n + queries, 384, 50, 0.9, rng)
    vectors, probes = data[:n], data[n:]
    index = PgVectorIndex(pool, ef_search=100)
    try:
        chunks = await seed(pool, [f"chunk {i}" for i in range(n)])
        await index.prepare(MODEL, 384)
        await index.upsert(MODEL, chunks, vectors)
        async with pool.connection() as conn:
            plan = await (await conn.execute(
                "explain select chunk_id from corpus.chunk_embeddings where model = %s "
                "order by embedding::vector(384) <=> %s::vector(384) limit 10", (MODEL, probes[0]),
            )).fetchall()
        assert "chunk_embeddings_hnsw" in " ".join(row[0] for row in plan), plan
        position = {c.chunk_id: i for i, c in enumerate(chunks)}
        recalls = []
        for probe in probes:
            hits = await index.search(MODEL, probe, k, SearchFilter())
            exact = set(np.argsort(-(vectors @ probe))[:k].tolist())
            recalls.append(len(exact & {position[h.chunk_id] for h in hits}) / k)
    finally:
        await pool.close()
    recall = float(np.mean(recalls))
    print(f"\nHNSW recall@{k} over {n} vectors: {recall:.3f}")
    assert recall >= 0.95
