"""Collectors: indicator extraction, collection into the knowledge graph, graph queries, STIX export
and import.

Graph answers respect the caller's `access.max_tlp` (unset: every label): an entity or relation
labelled above it is left out, and one asked for by id reads as absent. A raw Cypher query cannot
be filtered by label, so it needs a caller cleared for TLP:RED.

PauseCollector pauses a collector for every replica and Celery worker at once: the pause is kept
in Redis (services.collectors.pauses), which each run reads first.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsServicer
from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode, while_starting
from bev.runtime import ServiceRuntime, StartupError
from bev.stix import HASH_BY_LENGTH
from bev.telemetry import get_logger
from bev.vocab import Tlp, UnknownTlp
from services.collectors.builtin.taxii import TaxiiCollector, normalise_counted
from services.collectors.collection import Collection, CollectionRequest, DocumentSink, StoredFinding
from services.collectors.contract import (
    Collector,
    CollectorError,
    Document,
    InvalidTarget,
    TargetRefused,
    load_collectors,
)
from services.collectors.fetch import Fetcher
from services.collectors.graph import (
    ANY_TLP,
    MAX_DEPTH,
    EntityRow,
    FalkorGraphStore,
    GraphQueryError,
    GraphStore,
    GraphUnavailable,
    Neo4jGraphStore,
    RelationRow,
    Subgraph,
    plain,
)
from services.collectors.indicators import Indicator, extract_indicators
from services.collectors.observables import (
    STIX_TIMESTAMP,
    Observable,
    ObservableError,
    bundle,
    to_stix_object,
    to_stix_relationship,
)
from services.collectors.observations import ObservationStore, ObservationStoreUnavailable, migrate
from services.collectors.pauses import Pause, Pauses, PauseStoreUnavailable, redis_url, track
from services.collectors.pii import scrub_pii
from services.collectors.quarantine import Quarantine
from services.collectors.settings import CollectorsConfig, GraphConfig, Settings

log = get_logger(__name__)

T = TypeVar("T")
SecretReader = Callable[[str], dict[str, str]]

DEFAULT_NEIGHBORHOOD = 200
DEFAULT_QUERY_ROWS = 100
DEFAULT_IMPORT_SOURCE = "stix-import"
RAW_QUERY_REFUSED = "raw graph queries need a key cleared for TLP:RED"
MALWARE = "malware"  # the collector AnalyzeFile runs


def entity_pb(row: EntityRow) -> collectors_pb2.Entity:
    return collectors_pb2.Entity(id=row.id, type=row.type, value=row.value, properties_json=row.props,
                                 tlp=row.tlp.to_proto())


def relation_pb(row: RelationRow) -> collectors_pb2.Relation:
    return collectors_pb2.Relation(id=row.id, source_id=row.source_id, target_id=row.target_id, type=row.type,
                                   confidence=row.confidence, evidence_ids=list(row.evidence), tlp=row.tlp.to_proto())


def ceiling(access: common_pb2.Access) -> Tlp:
    """The most restrictive label the caller may read (TLP_UNSPECIFIED: any)."""
    try:
        return Tlp.from_proto(access.max_tlp, ANY_TLP)
    except UnknownTlp as exc:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"access.max_tlp: {exc}") from None


def subgraph_pb(graph: Subgraph) -> collectors_pb2.Subgraph:
    return collectors_pb2.Subgraph(entities=[entity_pb(e) for e in graph.entities],
                                   relations=[relation_pb(r) for r in graph.relations], truncated=graph.truncated)


def observation_pb(stored: StoredFinding) -> collectors_pb2.Observation:
    obs = stored.observation
    return collectors_pb2.Observation(
        id=obs.id, entity=entity_pb(stored.entity), relations=[relation_pb(r) for r in stored.relations],
        source=obs.source, collector=obs.collector, tlp=obs.tlp.to_proto(), confidence=obs.confidence,
        observed_at=obs.seen.timestamp())


def target_observable(target_type: str, value: str) -> Observable:
    """A CollectRequest's target: a file named by a hash carries it as its STIX hashes."""
    value = value.strip()
    if target_type == "file":
        algorithm = HASH_BY_LENGTH.get(len(value))
        if algorithm is None or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ObservableError(f"a file target is its MD5, SHA-1, SHA-256 or SHA-512 in hex, not {value[:80]!r}")
        return Observable("file", value.lower(), {"hashes": {algorithm: value.lower()}})
    return Observable(target_type, value)


def _indicator(found: Indicator) -> collectors_pb2.Indicator:
    message = collectors_pb2.Indicator(type=found.type, value=found.value, unicode_value=found.unicode_value)
    if found.homoglyph is not None:
        message.homoglyph.CopyFrom(collectors_pb2.Homoglyph(
            scripts=list(found.homoglyph.scripts), mixed_script=found.homoglyph.mixed_script,
            skeleton=found.homoglyph.skeleton))
    return message


class Collectors(CollectorsServicer):
    def __init__(self, info: InstanceInfo, config: CollectorsConfig, collection: Collection) -> None:
        super().__init__(info)
        self.config = config
        self.collection = collection
        track(collection.collectors)  # every collector's paused gauge reads 0 until a pause is seen

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        checks = []
        for name, probe in (("graph", self.collection.graph.counts()), ("postgres", self.collection.observations.count())):
            try:
                await asyncio.wait_for(probe, 2.0)
                checks.append(common_pb2.HealthCheck(name=name, ok=True))
            except (GraphUnavailable, ObservationStoreUnavailable, OSError, TimeoutError) as exc:
                checks.append(common_pb2.HealthCheck(name=name, ok=False, detail=str(exc) or type(exc).__name__))
        return checks

    async def Extract(self, request: collectors_pb2.ExtractRequest, ctx: CallContext) -> collectors_pb2.ExtractResponse:
        size = len(request.text.encode())
        if size > self.config.max_extract_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED, f"text is {size} bytes; Extract accepts at most {self.config.max_extract_bytes}"
            )
        text = await asyncio.to_thread(scrub_pii, request.text) if request.scrub_pii else request.text
        # Extraction is CPU-bound regex work: keep it off the event loop.
        indicators = await asyncio.to_thread(extract_indicators, text)
        return collectors_pb2.ExtractResponse(
            indicators=[_indicator(i) for i in indicators],
            scrubbed_text=text if request.scrub_pii else "",
        )

    async def Collect(self, request: collectors_pb2.CollectRequest,
                      ctx: CallContext) -> AsyncIterator[collectors_pb2.Observation]:
        async for observation in self._run(lambda: CollectionRequest(
                request.collector, target_observable(request.target_type, request.target),
                request.investigation_id, request.opsec, Tlp.from_proto(request.tlp, self.config.default_tlp),
                request.confidence)):
            yield observation

    async def AnalyzeFile(self, request: collectors_pb2.AnalyzeFileRequest,
                          ctx: CallContext) -> AsyncIterator[collectors_pb2.Observation]:
        """Quarantine the file, then run the malware collector on it as Collect would."""
        limit = self.config.malware.max_file_bytes
        if len(request.content) > limit:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED,
                           f"the file is {len(request.content)} bytes; the limit is {limit}")
        if not request.content:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "the file is empty")
        analyzer = self.collection.collectors.get(MALWARE)
        quarantine = getattr(analyzer, "quarantine", None)
        if not isinstance(quarantine, Quarantine):
            raise RpcError(StatusCode.FAILED_PRECONDITION, "this replica has no malware collector with a quarantine")
        try:
            kept = await asyncio.to_thread(quarantine.store, request.content, request.filename)
        except (CollectorError, OSError) as exc:
            raise RpcError(StatusCode.UNAVAILABLE, f"quarantine: {exc}") from None
        target = Observable("file", kept.sha256, {"hashes": {"SHA-256": kept.sha256}, "name": request.filename})
        async for observation in self._run(lambda: CollectionRequest(
                MALWARE, target, request.investigation_id, False,
                Tlp.from_proto(request.tlp, self.config.default_tlp), request.confidence)):
            yield observation

    async def _run(self, job: Callable[[], CollectionRequest]) -> AsyncIterator[collectors_pb2.Observation]:
        """One collection run's observations, its failures as the RPC errors callers act on."""
        try:
            async for stored in self.collection.run(job()):
                yield observation_pb(stored)
        except (InvalidTarget, ObservableError, UnknownTlp) as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except TargetRefused as exc:
            raise RpcError(StatusCode.PERMISSION_DENIED, str(exc)) from None
        except (CollectorError, GraphUnavailable, ObservationStoreUnavailable) as exc:
            raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None

    async def ListCollectors(self, request: collectors_pb2.ListCollectorsRequest,
                             ctx: CallContext) -> collectors_pb2.ListCollectorsResponse:
        paused: dict[str, Pause] = {}
        if self.collection.pauses is not None:
            try:
                paused = await self.collection.pauses.all(self.collection.collectors)
            except PauseStoreUnavailable as exc:  # as a run's check does: fail open, Redis is not needed to list
                log.warning("pauses unreadable; listing collectors as not paused", error=str(exc))
        return collectors_pb2.ListCollectorsResponse(collectors=[
            collector_info(c, paused.get(c.name))
            for c in sorted(self.collection.collectors.values(), key=lambda c: c.name)])

    async def PauseCollector(self, request: collectors_pb2.PauseCollectorRequest,
                             ctx: CallContext) -> collectors_pb2.PauseCollectorResponse:
        """Pause a collector (seconds > 0) or resume it (seconds = 0) for every replica and worker."""
        collector = self.collection.collectors.get(request.collector)
        if collector is None:
            raise RpcError(StatusCode.NOT_FOUND, f"no collector named {request.collector!r}; "
                                                 f"known: {', '.join(sorted(self.collection.collectors))}")
        if not math.isfinite(request.seconds) or request.seconds < 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT,
                           f"seconds must be 0 (resume) or more, not {request.seconds}")
        pauses = self.collection.pauses
        if pauses is None:
            raise RpcError(StatusCode.FAILED_PRECONDITION,
                           "this replica has no pause store: pauses are kept in Redis, which it was not given")
        pause: Pause | None = None
        try:
            if request.seconds > 0:
                pause = await pauses.pause(collector.name, request.seconds, request.reason or "no reason given",
                                           request.by or "unknown")
            else:
                await pauses.resume(collector.name)
        except PauseStoreUnavailable as exc:
            raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None
        if pause is not None:
            log.warning("collector paused", collector=collector.name, seconds=request.seconds, reason=pause.reason,
                        by=pause.by)
        else:
            log.info("collector resumed", collector=collector.name, by=request.by)
        return collectors_pb2.PauseCollectorResponse(collector=collector_info(collector, pause))

    async def GetEntity(self, request: collectors_pb2.GetEntityRequest, ctx: CallContext) -> collectors_pb2.Entity:
        if "--" not in request.id:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"{request.id!r} is not a STIX id (type--uuid)")
        row = await self._graph_call(self.collection.graph.get_entity(request.id, ceiling(request.access)))
        if row is None:  # absent, or above the caller's ceiling: the same answer, so the label stays unknown
            raise RpcError(StatusCode.NOT_FOUND, f"no entity {request.id}")
        return entity_pb(row)

    async def Neighborhood(self, request: collectors_pb2.NeighborhoodRequest, ctx: CallContext) -> collectors_pb2.Subgraph:
        depth = request.depth or 1
        limit = request.limit or DEFAULT_NEIGHBORHOOD
        if not 1 <= depth <= MAX_DEPTH:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"depth must be 1-{MAX_DEPTH}, not {depth}")
        if not 1 <= limit <= self.config.graph.max_neighborhood:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"limit must be 1-{self.config.graph.max_neighborhood}")
        max_tlp = ceiling(request.access)
        if await self._graph_call(self.collection.graph.get_entity(request.entity_id, max_tlp)) is None:
            raise RpcError(StatusCode.NOT_FOUND, f"no entity {request.entity_id}")
        return subgraph_pb(await self._graph_call(
            self.collection.graph.neighborhood(request.entity_id, depth, limit, max_tlp)))

    async def GraphQuery(self, request: collectors_pb2.GraphQueryRequest,
                         ctx: CallContext) -> collectors_pb2.GraphQueryResponse:
        if ceiling(request.access) != ANY_TLP:
            raise RpcError(StatusCode.PERMISSION_DENIED, RAW_QUERY_REFUSED)
        limit = request.limit or DEFAULT_QUERY_ROWS
        if not 1 <= limit <= self.config.graph.max_rows:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"limit must be 1-{self.config.graph.max_rows}")
        if not request.cypher.strip():
            raise RpcError(StatusCode.INVALID_ARGUMENT, "cypher is empty")
        try:
            params = json.loads(request.params_json) if request.params_json else {}
        except ValueError as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"params_json is not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise RpcError(StatusCode.INVALID_ARGUMENT, "params_json must be a JSON object")
        result = await self._graph_call(self.collection.graph.query(request.cypher, params, limit))
        return collectors_pb2.GraphQueryResponse(
            columns=result.columns, rows_json=[json.dumps(plain(row)) for row in result.rows], truncated=result.truncated)

    async def ExportStix(self, request: collectors_pb2.ExportStixRequest,
                         ctx: CallContext) -> collectors_pb2.ExportStixResponse:
        if not request.entity_ids:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "entity_ids is empty")
        if not 0 <= request.depth <= MAX_DEPTH:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"depth must be 0-{MAX_DEPTH}")
        graph = await self._graph_call(self.collection.graph.subgraph(
            list(request.entity_ids), request.depth, self.config.graph.max_neighborhood, ceiling(request.access)))
        if not graph.entities:
            raise RpcError(StatusCode.NOT_FOUND, "none of the entity ids is in the graph")
        first_seen = await self.collection.observations.first_seen([e.id for e in graph.entities])
        fallback = datetime.now(UTC)

        def stamp(entity_id: str) -> str:
            return first_seen.get(entity_id, fallback).astimezone(UTC).strftime(STIX_TIMESTAMP)

        objects = [to_stix_object(e.id, e.type, e.value, json.loads(e.props), stamp(e.id)) for e in graph.entities]
        objects += [to_stix_relationship(r.id, r.source_id, r.type, r.target_id, r.confidence, stamp(r.source_id))
                    for r in graph.relations]
        return collectors_pb2.ExportStixResponse(bundle_json=json.dumps(bundle(objects)), objects=len(objects))

    async def ImportStix(self, request: collectors_pb2.ImportStixRequest,
                         ctx: CallContext) -> collectors_pb2.ImportStixResponse:
        try:
            data = json.loads(request.bundle_json)
        except ValueError as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"bundle_json is not JSON: {exc}") from None
        objects = data.get("objects") if isinstance(data, dict) and data.get("type") == "bundle" else None
        if not isinstance(objects, list) or not all(isinstance(obj, dict) for obj in objects):
            raise RpcError(StatusCode.INVALID_ARGUMENT, 'bundle_json must be a STIX bundle: {"type": "bundle", "objects": [...]}')
        source = request.source.strip() or DEFAULT_IMPORT_SOURCE
        try:
            # What the taxii collector would store had it fetched this bundle from `source`.
            job = CollectionRequest(TaxiiCollector.name, Observable("url", source), request.investigation_id,
                                    tlp=Tlp.from_proto(request.tlp, self.config.default_tlp),
                                    confidence=request.confidence)
            collector = self.collection.collector(TaxiiCollector.name)
            # stix2 validation is CPU-bound: keep it off the event loop.
            findings, used = await asyncio.to_thread(normalise_counted, objects, source)
            stored = await self.collection.store_all(collector, job, findings)
        except (InvalidTarget, ObservableError, UnknownTlp, CollectorError) as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except GraphQueryError as exc:
            raise RpcError(StatusCode.INTERNAL, f"graph write failed: {exc}") from None
        except (GraphUnavailable, ObservationStoreUnavailable) as exc:
            raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None
        return collectors_pb2.ImportStixResponse(
            objects=len(objects), skipped=len(objects) - used, entities=stored.entities, relations=stored.relations,
            new_entities=stored.new_entities, new_relations=stored.new_relations)

    async def _graph_call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except GraphQueryError as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"graph query failed: {exc}") from None
        except GraphUnavailable as exc:
            raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None

    async def close(self) -> None:
        await self.collection.close()


def collector_info(c: Collector, pause: Pause | None) -> collectors_pb2.CollectorInfo:
    return collectors_pb2.CollectorInfo(
        name=c.name, description=c.description, consumes=sorted(c.consumes), produces=sorted(c.produces),
        rate_limit_per_s=c.rate_limit_per_s, needs_network=c.needs_network, needs_tor=c.needs_tor,
        api_key_secret=c.api_key_secret, paused_until=pause.until if pause else 0.0,
        paused_reason=pause.reason if pause else "")


def graph_store(config: GraphConfig, read_secret: SecretReader) -> GraphStore:
    if config.backend == "neo4j":
        creds = read_secret("neo4j")
        return Neo4jGraphStore(config.neo4j_uri, creds.get("user", "neo4j"), creds.get("password", ""), config.name,
                               batch_size=config.batch_size, query_timeout_ms=config.query_timeout_ms)
    creds = read_secret("falkordb")
    return FalkorGraphStore(creds["host"], int(creds["port"]), creds.get("password", ""), config.name,
                            batch_size=config.batch_size, query_timeout_ms=config.query_timeout_ms)


def corpus_sink(client: EmbeddingsClient) -> DocumentSink:
    """Hand collected documents to the embeddings service's corpus, with their provenance."""

    async def ingest(document: Document, collector: str, request: CollectionRequest) -> str:
        ingest_request = embeddings_pb2.IngestRequest(document=embeddings_pb2.DocumentInput(
            content=document.content, media_type=document.media_type, uri=document.uri, title=document.title,
            source=collector, tlp=request.tlp.to_proto(), investigation_id=request.investigation_id))
        try:
            # An embeddings service still starting (the fleet restarting) is waited for: a page
            # fetched now would otherwise be lost as a failed collection.
            response = await while_starting(lambda: client.Ingest(ingest_request))
        except RpcError as exc:
            raise CollectorError(f"embeddings corpus: {exc.code.name}: {exc.message}") from None
        return response.document_id

    return ingest


async def open_collection(config: CollectorsConfig, read_secret: SecretReader,
                          document_sink: DocumentSink | None = None, pauses: Pauses | None = None) -> Collection:
    """Connect the graph and PostgreSQL (schema migrated) and load the collectors; StartupError on
    failure. `pauses`: where runs read their collector's pause (closed with the collection)."""
    try:
        dsn = read_secret("postgres")["dsn"]
        graph = graph_store(config.graph, read_secret)
    except KeyError as exc:  # a secret without a field it must have; Vault errors pass through as they are
        raise StartupError(f"collectors: a Vault secret lacks the field {exc}") from None
    except GraphUnavailable as exc:
        raise StartupError(str(exc)) from None
    try:
        await graph.ensure_schema()
        await asyncio.to_thread(migrate, dsn)
        observations = ObservationStore(dsn)
        await observations.open()
    except (GraphUnavailable, ObservationStoreUnavailable) as exc:
        await graph.close()
        raise StartupError(str(exc)) from None
    return Collection(load_collectors(config), Fetcher(config.fetch), graph, observations, read_secret=read_secret,
                      scrub_pii=config.scrub_pii, document_sink=document_sink, pauses=pauses)


async def assemble(info: InstanceInfo, config: CollectorsConfig, read_secret: SecretReader,
                   document_sink: DocumentSink | None = None, pauses: Pauses | None = None) -> Collectors:
    """The service from its config and dependencies: `read_secret` gives the stores' credentials (and
    collectors' API keys as they run), `document_sink` takes fetched documents to the corpus,
    `pauses` keeps collectors' pauses (Redis, shared with the workers). The service and its tests
    start it this way; any failure is a StartupError with one line."""
    return Collectors(info, config, await open_collection(config, read_secret, document_sink, pauses))


async def build(runtime: ServiceRuntime[Settings]) -> Collectors:
    """Wire the service to Vault (its secrets), to the embeddings service (the corpus) and to Redis
    (pauses, shared with the Celery workers), then assemble it."""
    config = runtime.settings.collectors
    sink = corpus_sink(EmbeddingsClient.over_nats(runtime.nc)) if config.send_documents else None
    try:
        url = redis_url(config, runtime.secrets.read)
    except KeyError:
        raise StartupError("collectors: the Vault secret 'redis' has no url (pauses are kept in Redis)") from None
    return await assemble(runtime.info, config, runtime.secrets.read, sink, Pauses.from_url(url))
