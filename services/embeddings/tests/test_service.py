"""The embeddings service end to end, in this process: the servicer over NATS on a real nats-server,
its corpus in a real PostgreSQL, the real MiniLM; the gateway in front of it over real HTTP, behind
its guard, called with an admin's key (the official openai client included); the `bev ingest` /
`bev search` CLI as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp

from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer, Redis
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.testing.serving import serving_on_nats
from bev.vocab import Tlp
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.servicer import Embeddings, EmbeddingsDeps, assemble
from services.embeddings.settings import EmbeddingsConfig
from services.embeddings.tests import samples
from services.gateway.testing import gateway_on_free_port

BEV = Path(sys.executable).parent / "bev"


@dataclass
class Service:
    client: EmbeddingsClient
    http: httpx.AsyncClient  # the gateway's HTTP API, with an admin's key
    servicer: Embeddings
    nats_url: str
    admin_key: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def service(
    nats_server: NatsServer, fresh_database: Callable[[], str], redis_server: Redis, minilm: SentenceEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    config = EmbeddingsConfig(chunk_chars=400, chunk_overlap=80)
    models = ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)  # the session's MiniLM
    servicer = await assemble(InstanceInfo(service="embeddings"), config,
                              EmbeddingsDeps(fresh_database(), tmp_path_factory.mktemp("embeddings"), models))
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=30, max_concurrency=256) as nc, \
            gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=60, trust_env=False) as http:
        yield Service(EmbeddingsClient.over_nats(nc, timeout_s=60), http, servicer, nats_server.url,
                      gateway.admin_key)


def _doc(content: bytes, **fields: Any) -> embeddings_pb2.DocumentInput:
    return embeddings_pb2.DocumentInput(content=content, **fields)


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def _resolves(service: Service, hit: embeddings_pb2.SearchHit) -> None:
    """A citation resolves: the stored document's text at [start, end) is the excerpt."""
    document = await service.client.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=hit.document_id))
    assert document.text[hit.start : hit.end] == hit.excerpt
    assert document.title == hit.title and document.uri == hit.uri


async def test_embed_over_nats_matches_the_model(service: Service, minilm: SentenceEmbedder) -> None:
    texts = ["ransomware group", "phishing kit"]
    reply = await service.client.Embed(embeddings_pb2.EmbedRequest(texts=texts))
    assert reply.model == "all-MiniLM-L6-v2" and reply.dimensions == 384
    np.testing.assert_allclose([v.values for v in reply.vectors], minilm.encode(texts), atol=1e-6)
    assert reply.total_tokens == minilm.count_tokens(texts)
    models = await service.client.ListModels(embeddings_pb2.ListModelsRequest())
    assert [(m.name, m.dimensions, m.max_tokens) for m in models.models] == [("all-MiniLM-L6-v2", 384, 256)]
    with pytest.raises(RpcError) as missing:
        await service.client.Embed(embeddings_pb2.EmbedRequest(texts=["x"], model="no-such-model"))
    assert missing.value.code is StatusCode.NOT_FOUND
    with pytest.raises(RpcError) as empty:
        await service.client.Embed(embeddings_pb2.EmbedRequest())
    assert empty.value.code is StatusCode.INVALID_ARGUMENT


async def test_concurrent_embed_calls_are_batched(service: Service, minilm: SentenceEmbedder) -> None:
    texts = [f"observation {i}: beacon to host {i}" for i in range(64)]
    before = service.servicer.models.default.batcher.stats.batches
    replies = await asyncio.gather(*(service.client.Embed(embeddings_pb2.EmbedRequest(texts=[t])) for t in texts))
    expected = minilm.encode(texts, batch_size=1)
    for i, reply in enumerate(replies):
        np.testing.assert_allclose(reply.vectors[0].values, expected[i], atol=1e-5)
    assert service.servicer.models.default.batcher.stats.batches - before < 64


async def test_full_queue_is_resource_exhausted(service: Service, minilm: SentenceEmbedder) -> None:
    config = EmbeddingsConfig(max_queue=2)
    tiny = Embeddings(service.servicer.info, config, ModelRegistry([ModelRegistry.serve(minilm, config)], config.model),
                      service.servicer.corpus)
    try:
        with pytest.raises(RpcError) as full:
            ctx = CallContext("embeddings", "Embed", "nats", time.monotonic() + 10)
            await tiny.Embed(embeddings_pb2.EmbedRequest(texts=["a", "b", "c"]), ctx)
    finally:
        await tiny.models.close()
    assert full.value.code is StatusCode.RESOURCE_EXHAUSTED and "queue full" in full.value.message


async def test_ingest_every_format_and_cite(service: Service) -> None:
    documents = [
        _doc(samples.TEXT.encode(), filename="sweep.txt", source="notes"),
        _doc(samples.MARKDOWN.encode(), filename="volt.md", source="notes"),
        _doc(samples.HTML.encode(), media_type="text/html", uri="https://news.example/sandworm", source="news"),
        _doc(samples.pdf(samples.PDF_PAGES, "Threat summary Q3"), filename="q3.pdf", source="reports"),
        _doc(samples.stix_bundle(), filename="apt28.json", source="stix-feed"),
    ]
    ids = []
    for document in documents:
        reply = await service.client.Ingest(embeddings_pb2.IngestRequest(document=document))
        assert not reply.duplicate and reply.chunks >= 1
        ids.append(reply.document_id)
    assert len(set(ids)) == 5
    for query, title in [("Industroyer substations power outage", "Sandworm strikes the grid again"),
                         ("cryptocurrency exchange trojanised apps", "Threat summary Q3"),
                         ("GRU unit spearphishing webmail", "APT28 credential phishing campaign"),
                         ("living off the land netsh wmic", "Volt Typhoon field notes")]:
        found = await service.client.Search(embeddings_pb2.SearchRequest(query=query, k=3))
        assert found.hits and found.hits[0].title == title, (query, [h.title for h in found.hits])
        for hit in found.hits:
            await _resolves(service, hit)
    sandworm = await service.client.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=ids[2]))
    assert sandworm.uri == "https://news.example/sandworm" and sandworm.media_type == "text/html"
    assert sandworm.chunks >= 2 and "Cookie settings" not in sandworm.text


async def test_dedup_by_normalised_content(service: Service) -> None:
    text = "Dedup check: the loader beacons to 198.51.100.7 every 90 seconds."
    first = await service.client.Ingest(embeddings_pb2.IngestRequest(document=_doc(text.encode(), source="a")))
    again = await service.client.Ingest(embeddings_pb2.IngestRequest(
        document=_doc(f"  {text}\r\n\r\n".replace(" every", "   every").encode(), source="b")))
    assert not first.duplicate and again.duplicate and again.document_id == first.document_id
    racing = await asyncio.gather(*(service.client.Ingest(embeddings_pb2.IngestRequest(
        document=_doc(b"Race: eight callers ingest this same sentence at once."))) for _ in range(8)))
    assert len({r.document_id for r in racing}) == 1 and sum(not r.duplicate for r in racing) == 1


async def test_long_document_chunks_overlap_and_every_citation_resolves(service: Service) -> None:
    paragraphs = [f"Paragraph {i}. Host {i}.example.net contacted the C2 server on port {1000 + i}, "
                  f"then dropped a payload with hash {i:064x}." for i in range(40)]
    reply = await service.client.Ingest(embeddings_pb2.IngestRequest(
        document=_doc("\n\n".join(paragraphs).encode(), title="Long log", source="long")))
    assert reply.chunks > 5
    found = await service.client.Search(embeddings_pb2.SearchRequest(
        query="port 1017", k=10, filters=embeddings_pb2.SearchFilters(sources=["long"])))
    assert len(found.hits) == 10 and all(h.document_id == reply.document_id for h in found.hits)
    assert any("port 1017" in h.excerpt for h in found.hits[:3])
    by_text = await service.client.Search(embeddings_pb2.SearchRequest(
        query="port 1017", k=2, mode=embeddings_pb2.SEARCH_MODE_TEXT))
    assert "port 1017" in by_text.hits[0].excerpt  # chunks holding both terms rank first
    for hit in found.hits:
        await _resolves(service, hit)


async def test_search_filters_and_modes(service: Service) -> None:
    base = "Filter corpus: the {} campaign used a {} loader against {}."
    rows = [("jan", "clear", "inv-x", datetime(2026, 1, 5, tzinfo=UTC)),
            ("feb", "amber", "inv-x", datetime(2026, 2, 5, tzinfo=UTC)),
            ("mar", "red", "inv-y", datetime(2026, 3, 5, tzinfo=UTC))]
    for month, tlp, inv, when in rows:
        await service.client.Ingest(embeddings_pb2.IngestRequest(document=_doc(
            base.format(month, tlp, inv).encode(), source="filters", tlp=Tlp(tlp).to_proto(), investigation_id=inv,
            collected_at=_ts(when))))

    async def titles(**filters: Any) -> set[str]:
        reply = await service.client.Search(embeddings_pb2.SearchRequest(
            query="campaign loader", k=10,
            filters=embeddings_pb2.SearchFilters(sources=["filters"], **filters)))
        return {h.title.split(" the ")[1].split(" ")[0] for h in reply.hits}

    assert await titles() == {"jan", "feb", "mar"}
    assert await titles(tlp=[common_pb2.TLP_CLEAR, common_pb2.TLP_AMBER]) == {"jan", "feb"}
    assert await titles(tlp=[common_pb2.TLP_RED]) == {"mar"}
    assert await titles(tlp=[common_pb2.TLP_UNSPECIFIED]) == {"jan"}  # unspecified = clear
    assert await titles(investigation_id="inv-x") == {"jan", "feb"}
    assert await titles(collected_after=_ts(datetime(2026, 2, 1, tzinfo=UTC))) == {"feb", "mar"}
    assert await titles(collected_before=_ts(datetime(2026, 2, 1, tzinfo=UTC))) == {"jan"}
    for mode in (embeddings_pb2.SEARCH_MODE_VECTOR, embeddings_pb2.SEARCH_MODE_TEXT):
        reply = await service.client.Search(embeddings_pb2.SearchRequest(
            query="feb loader", k=1, mode=mode, filters=embeddings_pb2.SearchFilters(sources=["filters"])))
        assert len(reply.hits) == 1 and "feb" in reply.hits[0].excerpt
    with pytest.raises(RpcError) as bad:  # a value this service does not know (a newer peer's)
        await service.client.Search(embeddings_pb2.SearchRequest(
            query="x", filters=embeddings_pb2.SearchFilters(tlp=[common_pb2.Tlp.ValueType(42)])))
    assert bad.value.code is StatusCode.INVALID_ARGUMENT and "unknown TLP value 42" in bad.value.message
    with pytest.raises(RpcError) as bad:
        await service.client.Ingest(embeddings_pb2.IngestRequest(document=_doc(
            b"An unknown TLP value.", tlp=common_pb2.Tlp.ValueType(42))))
    assert bad.value.code is StatusCode.INVALID_ARGUMENT and "amber+strict" in bad.value.message


async def test_ingest_stream_reports_progress_per_document(service: Service) -> None:
    documents = [_doc(f"Stream document {i}: actor {i} reused infrastructure.".encode(), filename=f"s{i}.txt")
                 for i in range(4)]
    documents.insert(2, _doc(b"\x89PNG\r\n", filename="picture.png"))
    documents.append(_doc(documents[0].content, filename="copy.txt"))
    events = [e async for e in service.client.IngestStream(embeddings_pb2.IngestStreamRequest(documents=documents))]
    assert [e.index for e in events] == list(range(6)) and all(e.total == 6 for e in events)
    assert "unsupported file type '.png'" in events[2].error
    assert events[5].duplicate and events[5].document_id == events[0].document_id
    assert sum(bool(e.document_id) and not e.duplicate for e in events) == 4


async def test_delete_document_and_stats(service: Service) -> None:
    reply = await service.client.Ingest(embeddings_pb2.IngestRequest(document=_doc(b"To be deleted: a short note.")))
    before = await service.client.Stats(embeddings_pb2.StatsRequest())
    assert before.vector_backend == "pgvector" and before.vectors == before.chunks >= 1
    assert before.queues[0].model == "all-MiniLM-L6-v2" and before.queues[0].batches >= 1
    deleted = await service.client.DeleteDocument(embeddings_pb2.DeleteDocumentRequest(document_id=reply.document_id))
    assert deleted.deleted and deleted.chunks == 1
    after = await service.client.Stats(embeddings_pb2.StatsRequest())
    assert (after.documents, after.chunks, after.vectors) == (before.documents - 1, before.chunks - 1, before.vectors - 1)
    for call in (service.client.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=reply.document_id)),
                 service.client.DeleteDocument(embeddings_pb2.DeleteDocumentRequest(document_id="not-a-uuid"))):
        with pytest.raises(RpcError) as gone:
            await call
        assert gone.value.code is StatusCode.NOT_FOUND


async def test_gateway_documents_search_and_errors(service: Service) -> None:
    http = service.http
    memo = samples.pdf([["Gateway memo."], ["The funds were laundered through mixers, the memo says."]], "Memo")
    uploaded = await http.post("/api/v1/documents", files={"file": ("memo.pdf", memo, "application/pdf")},
                               data={"source": "gateway", "tlp": "green", "investigation_id": "inv-gw"})
    assert uploaded.status_code == 202, uploaded.text
    job = await _job_ended(http, uploaded.headers["location"])
    assert job["status"] == "completed", job
    document_id = job["document_id"]
    found = await http.get("/api/v1/search", params={"q": "laundered through mixers", "source": "gateway", "k": 3})
    assert found.status_code == 200, found.text
    hit = found.json()["hits"][0]
    assert job["duplicate"] is False and hit["title"] == "Memo"
    assert hit["document_id"] == document_id and hit["tlp"] == "green" and hit["investigation_id"] == "inv-gw"
    document = (await http.get(f"/api/v1/documents/{document_id}")).json()
    assert document["tlp"] == "green"
    for labels, found_it in ((["TLP:GREEN"], True), (["white", "amber+strict"], False)):
        filtered = await http.get("/api/v1/search", params={"q": "laundered through mixers", "tlp": labels})
        assert filtered.status_code == 200, filtered.text
        assert (document_id in {h["document_id"] for h in filtered.json()["hits"]}) is found_it
    assert document["text"][hit["start"] : hit["end"]] == hit["excerpt"]
    assert (await http.get("/api/v1/documents/00000000-0000-0000-0000-000000000000")).status_code == 404
    unsupported = await http.post("/api/v1/documents", files={"file": ("x.docx", b"PK\x03\x04", "application/vnd.ms-word")})
    assert unsupported.status_code == 415 and "unsupported" in unsupported.json()["error"]
    too_big = await http.post("/api/v1/documents", files={"file": ("big.txt", b"a" * (3 * 1024 * 1024 + 1), "text/plain")})
    assert too_big.status_code == 413
    # Other routes keep the 1 MiB limit.
    assert (await http.post("/api/v1/embeddings/embed", content=b"x" * (1024 * 1024 + 10),
                            headers={"content-type": "application/json"})).status_code == 413
    assert (await http.post("/api/v1/documents", files={"file": ("e.txt", b"", "text/plain")})).status_code == 400
    assert (await http.get("/api/v1/search", params={"q": ""})).status_code == 422
    assert (await http.get("/api/v1/search", params={"q": "x", "mode": "fuzzy"})).status_code == 400
    purple = await http.get("/api/v1/search", params={"q": "x", "tlp": "purple"})
    assert purple.status_code == 400 and "clear, green, amber, amber+strict, red" in purple.json()["error"]
    bad_upload = await http.post("/api/v1/documents", files={"file": ("t.txt", b"tlp", "text/plain")},
                                 data={"tlp": "TLP:PURPLE"})
    assert bad_upload.status_code == 400 and "TLP:PURPLE" in bad_upload.json()["error"]
    stats = await http.get("/api/v1/corpus/stats")
    assert stats.status_code == 200 and int(stats.json()["documents"]) >= 1


async def _job_ended(http: httpx.AsyncClient, url: str, timeout_s: float = 60) -> dict[str, Any]:
    """Follow an upload's job (its Location) until it completes or fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await http.get(url)
        assert reply.status_code == 200, reply.text
        job: dict[str, Any] = reply.json()
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.1)


async def test_openai_client_against_the_gateway(service: Service, minilm: SentenceEmbedder) -> None:
    import openai

    # openai 3 annotates http_client with its httpx2 fork; an httpx client (ours) works.
    client = openai.AsyncOpenAI(api_key=service.admin_key, base_url=str(service.http.base_url).rstrip("/") + "/v1",
                                http_client=service.http)  # type: ignore[arg-type]
    texts = ["ransomware negotiation chat", "cobalt strike beacon"]
    reply = await client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
    assert [d.index for d in reply.data] == [0, 1] and reply.model == "all-MiniLM-L6-v2"
    np.testing.assert_allclose([d.embedding for d in reply.data], minilm.encode(texts), atol=1e-6)
    assert reply.usage.prompt_tokens == minilm.count_tokens(texts)
    single = await client.embeddings.create(model="all-MiniLM-L6-v2", input="one text", encoding_format="float")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="all-MiniLM-L6-v2", input=[[101, 2023]])
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=128)


async def test_cli_ingest_and_search(service: Service, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "kimsuky.md").write_text("# Kimsuky\n\nKimsuky sent think-tank researchers fake interview requests.")
    (folder / "report.html").write_text(samples.HTML.replace("Sandworm", "Voodoo Bear"))
    (folder / "skip.bin").write_bytes(b"\x00\x01")  # not a supported extension: not walked
    env = {**os.environ, "BEV_NATS__URL": service.nats_url}

    async def bev(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(str(BEV), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode or 0, out.decode(), err.decode()

    code, _, err = await bev("ingest", str(folder), "--source", "cli-test", "--tlp", "green")
    assert code == 0, err
    assert "2 stored, 0 already in the corpus, 0 failed" in err
    code, out, err = await bev("search", "fake interview requests", "-k", "2", "--source", "cli-test")
    assert code == 0, err
    assert "Kimsuky" in out and "[0:" in out
    code, out, err = await bev("search", "fake interview requests", "-k", "1", "--tlp", "TLP:GREEN", "--json")
    assert code == 0, err
    assert json.loads(out)["hits"][0]["tlp"] == "green"
    code, _, err = await bev("ingest", str(folder), "--tlp", "purple")
    assert code == 2 and "purple" in err
    code, _, err = await bev("ingest", str(folder / "kimsuky.md"), str(tmp_path / "missing.txt"))
    assert code == 1 and "no such file" in err
