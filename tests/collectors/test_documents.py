"""Documents a collector finds are handed to the embeddings corpus (the real embeddings servicer,
MiniLM and pgvector), with provenance, also when the embeddings service starts after the page was
fetched, and a re-run finds the same corpus document."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import FalkorDB, NatsServer, Postgres
from bev.rpc import InstanceInfo
from bev.rpc.nats_transport import NatsRpcServer
from services.collectors.collection import CollectionRequest
from services.collectors.observables import Observable
from services.collectors.servicer import corpus_sink, open_collection
from services.collectors.settings import CollectorsConfig, FetchConfig
from services.collectors.testing import HttpFixture
from services.embeddings.corpus import Corpus, open_pool
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.schema import migrate
from services.embeddings.servicer import Embeddings
from services.embeddings.settings import EmbeddingsConfig
from services.embeddings.vector_index import PgVectorIndex

BLOG = Path(__file__).parents[2] / "services" / "collectors" / "tests" / "data" / "threat-blog.html"


async def _observations(run: AsyncIterator[Any]) -> list[Any]:
    return [s async for s in run]


@pytest.mark.slow
async def test_web_pages_reach_the_corpus_with_provenance(
        nats_server: NatsServer, postgres_server: Postgres, falkordb_server: FalkorDB, http_fixture: HttpFixture,
        fresh_database: Callable[[], str], minilm: SentenceEmbedder) -> None:
    config = EmbeddingsConfig()
    dsn = fresh_database()
    await asyncio.to_thread(migrate, dsn)
    pool = await open_pool(dsn)
    models = ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)
    corpus = Corpus(pool, PgVectorIndex(pool), models.default, chunk_chars=config.chunk_chars,
                    chunk_overlap=config.chunk_overlap, max_document_bytes=config.max_document_bytes)
    await corpus.prepare()
    embeddings = Embeddings(InstanceInfo(service="embeddings"), config, models, corpus)
    server_nc, client_nc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
    server = NatsRpcServer(server_nc, embeddings, max_request_bytes=4 * 1024 * 1024, default_timeout_s=60,
                           max_concurrency=16, instance=embeddings.info.instance)
    client = EmbeddingsClient.over_nats(client_nc, timeout_s=60)
    secrets = {"postgres": {"dsn": postgres_server.dsn},
               "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                            "password": falkordb_server.password}}
    collectors_config = CollectorsConfig(
        fetch=FetchConfig(allow_ranges=["127.0.0.0/8"], per_domain_rate_per_s=1000, tor_socks_url=""),
        graph={"name": f"docs-{uuid.uuid4().hex[:8]}"})
    collection = await open_collection(collectors_config, lambda name: secrets[name], corpus_sink(client))
    try:
        url = http_fixture.serve("/docs/glass-harbor.html", BLOG.read_bytes())
        request = CollectionRequest("web", Observable("url", url), investigation_id="inv-docs", tlp="amber")
        # The embeddings service comes up after the page was fetched (a fleet restarting): the
        # collection waits for it rather than losing the page as a failed run.
        first_run = asyncio.create_task(_observations(collection.run(request)))
        await asyncio.sleep(2.0)
        assert not first_run.done()
        await server.start()
        first = await first_run
        document_id = json.loads(first[0].entity.props)["corpus_document_id"]
        document = await client.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=document_id))
        assert (document.uri, document.source, document.tlp, document.investigation_id) == (
            url, "web", common_pb2.TLP_AMBER, "inv-docs")
        assert "HarborLoader" in document.text and document.title.startswith("Operation Glass Harbor")
        again = [s async for s in collection.run(request)]
        assert again[0].entity == first[0].entity  # same corpus document, graph unchanged
    finally:
        await collection.graph.delete_graph()  # type: ignore[attr-defined]
        await collection.close()
        await server.stop()
        await embeddings.close()
        await server_nc.close()
        await client_nc.close()
