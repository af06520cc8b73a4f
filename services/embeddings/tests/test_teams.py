"""Teams and TLP ceilings in the corpus, over a real nats-server with a real PostgreSQL+pgvector and
the real MiniLM: the request's `access` (team, max TLP) decides which documents, chunks and ingest
jobs a caller sees, what it may store and delete, and which stored document a duplicate answers.

The module's one database holds two teams' uploads and the shared corpus; each test uses texts (and
sources) of its own, so the tests do not depend on each other's order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.testing.serving import serving_on_nats
from bev.vocab import Tlp
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.servicer import EmbeddingsDeps, assemble
from services.embeddings.settings import EmbeddingsConfig

MODES = (embeddings_pb2.SEARCH_MODE_HYBRID, embeddings_pb2.SEARCH_MODE_VECTOR, embeddings_pb2.SEARCH_MODE_TEXT)
ADMIN = common_pb2.Access()  # what the gateway sends for an admin's key, and other services send


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    nats_server: NatsServer, fresh_database: Callable[[], str], minilm: SentenceEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddingsClient]:
    config = EmbeddingsConfig(ingest_poll_s=0.2)
    models = ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)  # the session's MiniLM
    servicer = await assemble(InstanceInfo(service="embeddings"), config,
                              EmbeddingsDeps(fresh_database(), tmp_path_factory.mktemp("teams"), models))
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60) as nc:
        yield EmbeddingsClient.over_nats(nc, timeout_s=60)


def access(team: str, max_tlp: Tlp | None = None) -> common_pb2.Access:
    return common_pb2.Access(team=team, max_tlp=max_tlp.to_proto() if max_tlp else common_pb2.TLP_UNSPECIFIED,
                             key_id=f"key-{team}")


def teams() -> tuple[str, str]:
    """Two teams of this test's own."""
    tag = uuid.uuid4().hex[:6]
    return f"team-a-{tag}", f"team-b-{tag}"


def doc(text: str, tlp: Tlp = Tlp.CLEAR, **fields: Any) -> embeddings_pb2.DocumentInput:
    return embeddings_pb2.DocumentInput(content=text.encode(), tlp=tlp.to_proto(), **fields)


async def ingest(client: EmbeddingsClient, who: common_pb2.Access, text: str, tlp: Tlp = Tlp.CLEAR,
                 **fields: Any) -> embeddings_pb2.IngestResponse:
    reply: embeddings_pb2.IngestResponse = await client.Ingest(
        embeddings_pb2.IngestRequest(document=doc(text, tlp, **fields), access=who))
    return reply


async def refused(call: Awaitable[Any]) -> RpcError:
    with pytest.raises(RpcError) as raised:
        await call
    return raised.value


async def job_ended(client: EmbeddingsClient, job_id: str, who: common_pb2.Access,
                    timeout_s: float = 60) -> embeddings_pb2.IngestJob:
    deadline = time.monotonic() + timeout_s
    while True:
        job: embeddings_pb2.IngestJob = await client.GetIngestJob(
            embeddings_pb2.GetIngestJobRequest(job_id=job_id, access=who))
        if job.status in (embeddings_pb2.INGEST_JOB_STATUS_COMPLETED, embeddings_pb2.INGEST_JOB_STATUS_FAILED):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def test_search_returns_k_visible_chunks_in_every_mode(client: EmbeddingsClient) -> None:
    """More invisible chunks than search reads as candidates (50) rank above every visible one;
    a reader still gets k hits, all of the shared corpus or its own team, none above its label."""
    mine, theirs = teams()
    source = f"search-{mine}"
    hidden: list[embeddings_pb2.DocumentInput] = []
    for i in range(40):  # another team's reports that hold every term of the query, twice
        hidden.append(doc(f"Nightjar loader beacon report {i}: the Nightjar loader beacon called home to "
                          f"c2-{i}.example on port {4000 + i}.", source=source))
    for i in range(15):  # shared, and this team's own, but above the reader's ceiling
        hidden.append(doc(f"Red Nightjar loader beacon note {i}: the Nightjar loader beacon rotated its key "
                          f"after {i} hours.", Tlp.RED, source=source))
    stream = embeddings_pb2.IngestStreamRequest(documents=hidden[:40], access=access(theirs))
    hidden_ids = {e.document_id async for e in client.IngestStream(stream)}
    for who, part in ((ADMIN, hidden[40:48]), (access(mine), hidden[48:])):
        stream = embeddings_pb2.IngestStreamRequest(documents=part, access=who)
        hidden_ids |= {e.document_id async for e in client.IngestStream(stream)}
    shared_ids: set[str] = set()
    own_ids: set[str] = set()
    for i in range(12):  # the shared corpus and this team's own, at labels it may read
        who, tlp = (ADMIN, (Tlp.CLEAR, Tlp.GREEN)[i % 2]) if i < 6 else (access(mine, Tlp.AMBER), Tlp.AMBER)
        reply = await ingest(client, who, f"Field note {i}: a loader was seen on host {i}.", tlp, source=source)
        (shared_ids if i < 6 else own_ids).add(reply.document_id)
    visible_ids = shared_ids | own_ids
    assert len(hidden_ids) == 55 and len(visible_ids) == 12 and "" not in hidden_ids | visible_ids

    reader = access(mine, Tlp.AMBER)
    filters = embeddings_pb2.SearchFilters(sources=[source])
    for mode in MODES:
        found = await client.Search(embeddings_pb2.SearchRequest(
            query="Nightjar loader beacon", k=10, mode=mode, filters=filters, access=reader))
        assert len(found.hits) == 10, (mode, len(found.hits))
        assert {h.document_id for h in found.hits} <= visible_ids, mode
        assert all(h.tlp in (common_pb2.TLP_CLEAR, common_pb2.TLP_GREEN, common_pb2.TLP_AMBER) for h in found.hits)
        # An admin's search over the same chunks finds the others first: the filter is what hid them.
        everything = await client.Search(embeddings_pb2.SearchRequest(
            query="Nightjar loader beacon", k=10, mode=mode, filters=filters, access=ADMIN))
        assert len(everything.hits) == 10 and {h.document_id for h in everything.hits} & hidden_ids, mode
    # The other team sees its own reports and the shared corpus, never this team's notes.
    other = await client.Search(embeddings_pb2.SearchRequest(
        query="loader seen on host", k=50, mode=embeddings_pb2.SEARCH_MODE_TEXT, filters=filters,
        access=access(theirs)))
    seen = {h.document_id for h in other.hits}
    assert shared_ids <= seen and not seen & own_ids
    # A filter on labels above the ceiling leaves nothing, rather than being ignored.
    above = await client.Search(embeddings_pb2.SearchRequest(
        query="Nightjar loader beacon", k=10, filters=embeddings_pb2.SearchFilters(
            sources=[source], tlp=[common_pb2.TLP_RED]), access=reader))
    assert list(above.hits) == []
    cleared = await client.Search(embeddings_pb2.SearchRequest(
        query="Nightjar loader beacon", k=10, filters=embeddings_pb2.SearchFilters(
            sources=[source], tlp=[common_pb2.TLP_RED, common_pb2.TLP_GREEN]), access=reader))
    assert cleared.hits and all(h.tlp == common_pb2.TLP_GREEN for h in cleared.hits)


async def test_another_teams_document_reads_as_absent(client: EmbeddingsClient) -> None:
    mine, theirs = teams()
    own = await ingest(client, access(mine), f"Own note of {mine}: the actor reused a VPS.", Tlp.AMBER)
    foreign = await ingest(client, access(theirs), f"Note of {theirs}: the actor reused a VPS.")
    shared = await ingest(client, ADMIN, f"Shared report for {mine}: the actor reused a VPS.")
    red = await ingest(client, ADMIN, f"Shared red report for {mine}: the actor reused a VPS.", Tlp.RED)
    unknown = str(uuid.uuid4())

    async def get(document_id: str, who: common_pb2.Access) -> embeddings_pb2.Document:
        document: embeddings_pb2.Document = await client.GetDocument(
            embeddings_pb2.GetDocumentRequest(document_id=document_id, access=who))
        return document

    assert (await get(own.document_id, access(mine))).team == mine
    assert (await get(shared.document_id, access(mine, Tlp.CLEAR))).team == ""
    assert (await get(foreign.document_id, ADMIN)).team == theirs  # an admin sees every team
    assert (await get(red.document_id, access(mine))).tlp == common_pb2.TLP_RED  # no ceiling: any label

    not_found = await refused(get(unknown, access(mine)))
    assert not_found.code is StatusCode.NOT_FOUND
    for document_id, who in ((foreign.document_id, access(mine)), (own.document_id, access(theirs)),
                             (red.document_id, access(mine, Tlp.AMBER)), (own.document_id, access(mine, Tlp.GREEN))):
        error = await refused(get(document_id, who))
        assert error.code is StatusCode.NOT_FOUND
        assert error.message == not_found.message.replace(unknown, document_id)  # word for word
        deleting = await refused(client.DeleteDocument(
            embeddings_pb2.DeleteDocumentRequest(document_id=document_id, access=who)))
        assert deleting.code is StatusCode.NOT_FOUND and deleting.message == error.message
        assert (await get(document_id, ADMIN)).id == document_id  # still there

    # The shared corpus is read by every team but deleted only by an admin (or a service).
    denied = await refused(client.DeleteDocument(
        embeddings_pb2.DeleteDocumentRequest(document_id=shared.document_id, access=access(mine))))
    assert denied.code is StatusCode.PERMISSION_DENIED and "shared corpus" in denied.message
    assert (await get(shared.document_id, access(mine))).id == shared.document_id
    for document_id, who in ((own.document_id, access(mine)), (shared.document_id, ADMIN),
                             (foreign.document_id, ADMIN)):
        deleted = await client.DeleteDocument(embeddings_pb2.DeleteDocumentRequest(document_id=document_id,
                                                                                   access=who))
        assert deleted.deleted and deleted.chunks == 1
        assert (await refused(get(document_id, ADMIN))).code is StatusCode.NOT_FOUND


async def test_a_caller_cannot_store_what_it_may_not_read(client: EmbeddingsClient) -> None:
    mine, _ = teams()
    green = access(mine, Tlp.GREEN)
    before = await client.Stats(embeddings_pb2.StatsRequest())
    text = f"Amber note of {mine}: the implant hid in a printer driver."
    for call in (
        client.Ingest(embeddings_pb2.IngestRequest(document=doc(text, Tlp.AMBER), access=green)),
        client.SubmitIngest(embeddings_pb2.SubmitIngestRequest(document=doc(text, Tlp.AMBER), access=green)),
    ):
        error = await refused(call)
        assert error.code is StatusCode.PERMISSION_DENIED
        assert error.message == "the document is TLP:AMBER; this key reads at most TLP:GREEN"
    stream = embeddings_pb2.IngestStreamRequest(
        documents=[doc(f"Green note of {mine}.", Tlp.GREEN), doc(text, Tlp.AMBER)], access=green)
    error = await refused(_drain(client.IngestStream(stream)))
    assert error.code is StatusCode.PERMISSION_DENIED and error.message.startswith("documents[1] is TLP:AMBER")
    after = await client.Stats(embeddings_pb2.StatsRequest())
    assert after.documents == before.documents  # nothing stored, not even the green one before it
    bad = await refused(client.Ingest(embeddings_pb2.IngestRequest(
        document=doc(text), access=common_pb2.Access(team=mine, max_tlp=common_pb2.Tlp.ValueType(42)))))
    assert bad.code is StatusCode.INVALID_ARGUMENT and "access.max_tlp" in bad.message
    stored = await ingest(client, green, f"Green note of {mine}: the implant hid in a printer driver.", Tlp.GREEN)
    assert not stored.duplicate


async def _drain(events: AsyncIterator[embeddings_pb2.IngestProgress]) -> list[embeddings_pb2.IngestProgress]:
    return [event async for event in events]


async def test_ingest_jobs_belong_to_their_team(client: EmbeddingsClient) -> None:
    mine, theirs = teams()
    submitted = await client.SubmitIngest(embeddings_pb2.SubmitIngestRequest(
        document=doc(f"Job of {theirs}: the wiper spread over SMB.", Tlp.AMBER, filename="wiper.txt"),
        access=access(theirs)))
    job = await job_ended(client, submitted.job_id, access(theirs))
    assert job.status == embeddings_pb2.INGEST_JOB_STATUS_COMPLETED, job
    assert (await client.GetDocument(embeddings_pb2.GetDocumentRequest(
        document_id=job.document_id, access=access(theirs)))).team == theirs
    assert (await job_ended(client, submitted.job_id, ADMIN)).job_id == submitted.job_id

    unknown = str(uuid.uuid4())
    not_found = await refused(client.GetIngestJob(embeddings_pb2.GetIngestJobRequest(job_id=unknown,
                                                                                      access=access(mine))))
    assert not_found.code is StatusCode.NOT_FOUND
    for who in (access(mine), access(theirs, Tlp.GREEN)):
        error = await refused(client.GetIngestJob(embeddings_pb2.GetIngestJobRequest(job_id=submitted.job_id,
                                                                                      access=who)))
        assert error.code is StatusCode.NOT_FOUND
        assert error.message == not_found.message.replace(unknown, submitted.job_id)

    # A job an admin (or a service) submitted stores a shared document: every team may follow it.
    shared = await client.SubmitIngest(embeddings_pb2.SubmitIngestRequest(
        document=doc(f"Shared job for {mine}: the wiper spread over SMB.", filename="shared.txt"), access=ADMIN))
    done = await job_ended(client, shared.job_id, access(mine))
    assert done.status == embeddings_pb2.INGEST_JOB_STATUS_COMPLETED
    assert (await client.GetDocument(embeddings_pb2.GetDocumentRequest(
        document_id=done.document_id, access=access(mine)))).team == ""


async def test_deduplication_never_answers_another_teams_document(client: EmbeddingsClient) -> None:
    mine, theirs = teams()
    text = f"Dedup across teams ({mine}): the stealer posted cookies to a Telegram bot."
    shared = await ingest(client, ADMIN, text)
    own = await ingest(client, access(mine), text)
    foreign = await ingest(client, access(theirs), text)
    assert not (shared.duplicate or own.duplicate or foreign.duplicate)
    assert len({shared.document_id, own.document_id, foreign.document_id}) == 3
    # Within a team (and within the shared corpus) the same text is still stored once.
    assert (await ingest(client, access(mine), text)).document_id == own.document_id
    again = await ingest(client, access(theirs), f"  {text}\n")
    assert again.duplicate and again.document_id == foreign.document_id
    assert (await ingest(client, ADMIN, text)).document_id == shared.document_id
    # ... also on the job path.
    submitted = await client.SubmitIngest(embeddings_pb2.SubmitIngestRequest(
        document=doc(text, filename="again.txt"), access=access(theirs)))
    job = await job_ended(client, submitted.job_id, access(theirs))
    assert job.duplicate and job.document_id == foreign.document_id, job

    # Nor does it answer a document of the same team above the new one's label: a key of the team
    # cleared for amber gets its own copy, not the id of a red one it could not read.
    secret = f"Dedup across labels ({mine}): the insider copied the HR database."
    red = await ingest(client, access(mine), secret, Tlp.RED)
    amber = await ingest(client, access(mine, Tlp.AMBER), secret, Tlp.AMBER)
    assert not amber.duplicate and amber.document_id != red.document_id
    # A copy at a lower label answers for a higher one: whoever may store the red text may read it.
    assert (await ingest(client, access(mine), secret, Tlp.RED)).document_id == red.document_id
    assert (await ingest(client, access(mine, Tlp.AMBER), secret, Tlp.AMBER)).document_id == amber.document_id

    # Racing callers of two teams: each team ends with one document of its own.
    race = f"Dedup race ({mine}): the loader checked the keyboard layout first."
    callers = [access(mine), access(theirs)] * 4
    replies = await asyncio.gather(*(ingest(client, who, race) for who in callers))
    by_team: dict[str, set[str]] = {}
    for who, reply in zip(callers, replies, strict=True):
        by_team.setdefault(who.team, set()).add(reply.document_id)
    assert all(len(ids) == 1 for ids in by_team.values()) and len(set().union(*by_team.values())) == 2
    assert sum(not r.duplicate for r in replies) == 2
