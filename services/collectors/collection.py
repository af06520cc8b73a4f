"""Running a collector and storing what it finds: the path both the RPC and Celery tasks take.

For each finding: entities and relations are upserted into the graph, the observation with its
provenance (source, collector, time, TLP, confidence) is written to PostgreSQL, and only then is
it reported to the caller. Everything written is keyed by deterministic ids, so running the same
collection again adds nothing (a rerun refreshes `last_seen`, nothing else). The graph rows carry
the request's TLP label (services.collectors.graph keeps the least restrictive one seen).

`store_all` writes many findings (an imported STIX bundle) the same way, in batches.

A paused collector (services.collectors.pauses) does not run: `run` raises CollectorPaused. Each
run is counted in bev_collector_runs_total by outcome: ok, error (the collector, the fetch or a
store failed) or paused. A run the request itself made fail (an invalid target, a target policy
refuses) is not counted: it says nothing about the source, and monitoring pauses collectors whose
runs keep failing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from prometheus_client import Counter

from bev.vocab import Tlp, UnknownTlp
from services.collectors.contract import (
    CollectContext,
    Collector,
    Document,
    Finding,
    InvalidTarget,
    TargetRefused,
)
from services.collectors.fetch import Fetcher
from services.collectors.graph import EntityRow, GraphStore, RelationRow
from services.collectors.observables import Observable
from services.collectors.observations import ObservationRow, ObservationStore, now, observation_id
from services.collectors.pauses import CollectorPaused, Pauses
from services.collectors.pii import scrub_pii
from services.collectors.ratelimit import SlotLimiter

RUNS = Counter("bev_collector_runs_total", "Collector runs by outcome: ok, error or paused",
               ["collector", "outcome"])


@dataclass(frozen=True)
class CollectionRequest:
    collector: str
    target: Observable
    investigation_id: str = ""
    opsec: bool = False
    tlp: Tlp = Tlp.CLEAR  # a label ("amber", "TLP:AMBER") becomes its Tlp; an unknown one is InvalidTarget
    confidence: int = 0  # 0 = the collector's default

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "tlp", Tlp(self.tlp))
        except UnknownTlp as exc:
            raise InvalidTarget(str(exc)) from None
        if not 0 <= self.confidence <= 100:
            raise InvalidTarget(f"confidence must be 0-100, not {self.confidence}")


DocumentSink = Callable[[Document, str, CollectionRequest], Awaitable[str]]


@dataclass(frozen=True)
class StoredFinding:
    """A finding after it was written: its observation id, the rows written, and its provenance."""

    observation: ObservationRow
    entity: EntityRow
    relations: tuple[RelationRow, ...]
    finding: Finding


@dataclass(frozen=True)
class StoredBatch:
    """What `store_all` wrote: distinct entities and relations, and how many of them were new."""

    entities: int
    relations: int
    new_entities: int
    new_relations: int


@dataclass
class Collection:
    """The collectors this process runs, and where their findings go."""

    collectors: Mapping[str, Collector]
    fetcher: Fetcher
    graph: GraphStore
    observations: ObservationStore
    # Vault lookups for collectors that declare an API key secret (name -> dict).
    read_secret: Callable[[str], Mapping[str, str]] = field(default=lambda name: {})
    # Scrub PII before anything is stored: email entities are dropped, and emails, phone, card and
    # social-security numbers are replaced in stored properties and in documents.
    scrub_pii: bool = False
    # Where documents go (the embeddings corpus, over RPC); returns the corpus document id, which
    # is kept on the entity. None = documents are not handed on.
    document_sink: DocumentSink | None = None
    # Where pauses are read before each run (Redis, shared by every process); None = no pauses.
    pauses: Pauses | None = None
    _limiters: dict[str, SlotLimiter] = field(default_factory=dict)

    async def close(self) -> None:
        await self.fetcher.close()
        await self.graph.close()
        await self.observations.close()
        if self.pauses is not None:
            await self.pauses.close()

    def collector(self, name: str) -> Collector:
        collector = self.collectors.get(name)
        if collector is None:
            raise InvalidTarget(f"no collector named {name!r}; known: {', '.join(sorted(self.collectors))}")
        return collector

    async def run(self, request: CollectionRequest) -> AsyncIterator[StoredFinding]:
        """Run the request's collector and store each finding; CollectorPaused when it is paused."""
        collector = self.collector(request.collector)
        if request.target.type not in collector.consumes:
            raise InvalidTarget(f"collector {collector.name!r} consumes {', '.join(sorted(collector.consumes))}, "
                                f"not {request.target.type}")
        pause = await self.pauses.check(collector.name) if self.pauses is not None else None
        if pause is not None:
            RUNS.labels(collector=collector.name, outcome="paused").inc()
            raise CollectorPaused(pause)
        try:
            secrets = self.read_secret(collector.api_key_secret) if collector.api_key_secret else {}
            limiter = self._limiters.setdefault(collector.name, SlotLimiter(collector.rate_limit_per_s))
            await limiter.wait(collector.name)  # over quota: queue, do not fail
            context = CollectContext(self.fetcher, request.investigation_id, request.opsec, secrets)
            async for finding in collector.collect(request.target, context):
                if self.scrub_pii:
                    scrubbed = _scrubbed(finding)
                    if scrubbed is None:
                        continue
                    finding = scrubbed
                yield await self.store(collector, request, finding)
        except (InvalidTarget, TargetRefused):
            raise  # the request's own fault: not counted (see the module's docstring)
        except Exception:
            RUNS.labels(collector=collector.name, outcome="error").inc()
            raise
        # A caller that stops reading early (GeneratorExit, cancellation) ends the run uncounted.
        RUNS.labels(collector=collector.name, outcome="ok").inc()

    async def store(self, collector: Collector, request: CollectionRequest, finding: Finding) -> StoredFinding:
        stored, entities = await self._rows(collector, request, finding)
        await self.graph.upsert(entities, stored.relations)
        await self.observations.record([stored.observation])
        return stored

    async def store_all(self, collector: Collector, request: CollectionRequest,
                        findings: Sequence[Finding]) -> StoredBatch:
        """Store many findings as `run` stores each (PII scrubbed when configured), with one batched
        write per store."""
        observations: dict[str, ObservationRow] = {}
        entities: list[EntityRow] = []
        relations: list[RelationRow] = []
        for finding in findings:
            if self.scrub_pii:
                scrubbed = _scrubbed(finding)
                if scrubbed is None:
                    continue
                finding = scrubbed
            stored, rows = await self._rows(collector, request, finding)
            known = observations.get(stored.observation.id)
            if known is None or stored.observation.confidence > known.confidence:  # as the upsert keeps the highest
                observations[stored.observation.id] = stored.observation
            entities += rows
            relations += stored.relations
        new_entities, new_relations = await self.graph.unknown(entities, relations)
        await self.graph.upsert(entities, relations)
        await self.observations.record(list(observations.values()))
        return StoredBatch(len({e.id for e in entities}), len({r.id for r in relations}),
                           len(new_entities), len(new_relations))

    async def _rows(self, collector: Collector, request: CollectionRequest,
                    finding: Finding) -> tuple[StoredFinding, list[EntityRow]]:
        """A finding's observation and graph rows (its document handed to the corpus first), and
        every entity it writes: its own and its relations' other ends."""
        confidence = request.confidence or finding.confidence or collector.default_confidence
        if finding.document is not None and self.document_sink is not None:
            # The corpus deduplicates by content, so a re-run gets the same id back (graph unchanged).
            document_id = await self.document_sink(finding.document, collector.name, request)
            observable = finding.observable
            finding = replace(finding, observable=replace(
                observable, properties={**observable.properties, "corpus_document_id": document_id}))
        entity = EntityRow.of(finding.observable, request.tlp)
        obs_id = observation_id(collector.name, finding.source, entity.id, request.investigation_id)
        observation = ObservationRow(obs_id, entity.id, entity.type, entity.value, finding.source, collector.name,
                                     request.investigation_id, request.tlp, confidence, now())
        entities = [entity]
        relations: list[RelationRow] = []
        for relation in finding.relations:
            for end in (relation.source, relation.target):
                if end.id != entity.id:
                    entities.append(EntityRow.of(end, request.tlp))
            relations.append(RelationRow.of(relation, evidence=[obs_id],
                                            confidence=min(relation.confidence, confidence), tlp=request.tlp))
        return StoredFinding(observation, entity, tuple(relations), finding), entities



def _scrubbed(finding: Finding) -> Finding | None:
    """The finding with PII removed, or None when the finding itself is PII (an email address)."""
    if finding.observable.type == "email-addr":
        return None
    relations = tuple(r for r in finding.relations if "email-addr" not in (r.source.type, r.target.type))
    document = finding.document
    if document is not None and (document.media_type.startswith("text/") or document.media_type.endswith("xml")):
        content = scrub_pii(document.content.decode("utf-8", "replace")).encode()
        document = replace(document, content=content)
    return replace(finding, observable=_scrub_observable(finding.observable), relations=tuple(
        replace(r, source=_scrub_observable(r.source), target=_scrub_observable(r.target)) for r in relations),
        document=document)


def _scrub_observable(observable: Observable) -> Observable:
    properties = {key: scrub_pii(value) if isinstance(value, str) else value
                  for key, value in observable.properties.items()}
    return replace(observable, properties=properties)
