"""The ingestion phase: deterministic playbooks per observable type, run by worker agents.

A `Task` is one pivot: a collector run (`collect`) or a graph lookup (`neighborhood`: what feeds,
TAXII polling and earlier collections already stored around an entity). Running a task stores its
findings as evidence and returns the follow-up tasks the playbook derives from them:

- domain -> DNS and WHOIS; the target's own web page (http and https) and the seeds;
- page -> the URLs, hosts, wallets, hashes and addresses it names; in-scope URLs are fetched in turn
  (same registrable domain, an allowed name, or a host that an in-scope page named);
- wallet -> transaction tracing (bitcoin / ethereum collectors) -> counterparties;
- a linked file (an executable, an Office document, an archive: by its path) -> static malware
  analysis instead of the web page; a linked photo -> its EXIF location (geo); a linked Mastodon or
  Bluesky profile -> the account's profile and posts (social); the target's addresses -> GeoIP;
- every indicator worth it (target, hashes, CVEs, IPs, wallets, malware) -> its graph neighbourhood.

Each follow-up is one pivot deeper; tasks deeper than the budget's max_depth are not run. Follow-ups
come only from what the collectors extracted and every one passes the scope check in
`Agent.call`: text on a page can name a URL, never make the swarm fetch one outside the scope.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from bev.collectors.v1 import collectors_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.rpc import RpcError, while_starting
from bev.social_accounts import profile_account
from bev.vocab import Tlp
from services.swarm.agents import Agent, Investigation, Refused
from services.swarm.roles import COLLECT, GET_DOCUMENT, NEIGHBORHOOD, SEARCH
from services.swarm.store import EvidenceRow, evidence_id

# Entity types whose graph neighbourhood is worth a lookup (what feeds and STIX bundles relate).
LOOKUP_TYPES = frozenset({"file", "vulnerability", "malware", "intrusion-set", "threat-actor", "campaign",
                          "ipv4-addr", "ipv6-addr", "x-crypto-address", "domain-name"})


@dataclass(frozen=True)
class Task:
    kind: str  # collect | neighborhood
    target_type: str
    target: str
    depth: int
    collector: str = ""
    reason: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.collector, self.target)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(**data)


@dataclass
class Outcome:
    """What one task found: new evidence ids, entities and relations (as values), follow-ups."""

    evidence: list[str]
    follow_ups: list[Task]
    error: str = ""
    refused: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"evidence": self.evidence, "follow_ups": [t.to_dict() for t in self.follow_ups],
                "error": self.error, "refused": self.refused}


# A linked URL whose path ends so is a file to analyse statically, or a photo to locate, not a page.
SAMPLE_SUFFIXES = (".exe", ".dll", ".scr", ".msi", ".bin", ".elf", ".so", ".apk", ".jar", ".ps1", ".vbs", ".hta",
                   ".lnk", ".doc", ".docm", ".xls", ".xlsm", ".ppt", ".pptm", ".rtf", ".iso", ".zip", ".7z", ".rar")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".heic", ".png", ".webp")
IP_TYPES = frozenset({"ipv4-addr", "ipv6-addr"})


def url_task(url: str, depth: int, reason: str) -> Task:
    """The collector a URL calls for: a social profile, a file sample, a photo, else a web page."""
    account = profile_account(url)
    if account is not None:
        return Task("collect", "user-account", account, depth, "social", reason)
    path = urlsplit(url).path.lower()
    if path.endswith(SAMPLE_SUFFIXES):
        return Task("collect", "url", url, depth, "malware", reason)
    if path.endswith(PHOTO_SUFFIXES):
        return Task("collect", "url", url, depth, "geo", reason)
    return Task("collect", "url", url, depth, "web", reason)


def initial_tasks(stix_type: str, value: str, seeds: Sequence[str]) -> list[Task]:
    """The leader's plan for the target: where the playbook starts."""
    tasks: list[Task] = []
    if stix_type == "domain-name":
        tasks += [Task("collect", stix_type, value, 0, "dns", "the target's DNS records"),
                  Task("collect", stix_type, value, 0, "whois", "the target's registration")]
        tasks += [Task("collect", "url", f"{scheme}://{value}/", 0, "web", "the target's web page")
                  for scheme in ("http", "https")]
    elif stix_type == "url":
        tasks.append(url_task(value, 0, "the target"))
        host = urlsplit(value).hostname or ""
        if host and not _is_ip(host):
            tasks.append(Task("collect", "domain-name", host, 0, "dns", "the target's host"))
    elif stix_type == "x-crypto-address":
        collector = "ethereum" if value.lower().startswith("0x") else "bitcoin"
        tasks.append(Task("collect", stix_type, value, 0, collector, "trace the wallet's transactions"))
    elif stix_type in IP_TYPES:
        tasks.append(Task("collect", stix_type, value, 0, "geo", "where the address is (GeoIP)"))
    elif stix_type == "user-account":
        tasks.append(Task("collect", stix_type, value, 0, "social", "the account's profile and public posts"))
    elif stix_type == "file":
        tasks.append(Task("collect", stix_type, value, 0, "malware", "static analysis of the sample, if BEV holds it"))
    tasks.append(Task("neighborhood", stix_type, value, 0, reason="what the graph already holds about the target"))
    tasks += [url_task(seed, 0, "a seed the analyst gave") for seed in seeds]
    return tasks


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def observation_text(obs: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """The evidence text of an observation: what was seen and how it relates, by value (claims are
    checked against this text)."""
    entity = obs["entity"]
    lines = [f"{obs['collector']} observed {entity['type']} {entity['value']} at {obs['source']}"]
    for relation in obs["relations"]:
        source = names.get(relation["source_id"], relation["source_id"])
        target = names.get(relation["target_id"], relation["target_id"])
        lines.append(f"{source} {relation['type']} {target}")
    props = entity.get("properties") or {}
    for key in ("title", "name", "description"):
        if isinstance(props.get(key), str) and props[key]:
            lines.append(f"{key}: {props[key][:500]}")
    return "\n".join(lines)


def _observation(obs: collectors_pb2.Observation) -> dict[str, Any]:
    try:
        properties = json.loads(obs.entity.properties_json) if obs.entity.properties_json else {}
    except json.JSONDecodeError:
        properties = {}
    return {
        "id": obs.id, "source": obs.source, "collector": obs.collector, "tlp": Tlp.from_proto(obs.tlp, Tlp.CLEAR).value,
        "confidence": obs.confidence, "observed_at": obs.observed_at,
        "entity": {"id": obs.entity.id, "type": obs.entity.type, "value": obs.entity.value, "properties": properties},
        "relations": [{"source_id": r.source_id, "target_id": r.target_id, "type": r.type, "confidence": r.confidence}
                      for r in obs.relations],
    }


def _subgraph(graph: collectors_pb2.Subgraph) -> dict[str, Any]:
    return {"entities": [{"id": e.id, "type": e.type, "value": e.value} for e in graph.entities],
            "relations": [{"source_id": r.source_id, "target_id": r.target_id, "type": r.type,
                           "confidence": r.confidence} for r in graph.relations],
            "truncated": graph.truncated}


class Names:
    """STIX id -> value for relation ends: from the investigation's evidence, else the graph."""

    def __init__(self, investigation: Investigation, known: Mapping[str, str]) -> None:
        self.investigation = investigation
        self.known = dict(known)

    async def resolve(self, ids: Iterable[str]) -> dict[str, str]:
        for entity_id in ids:
            if entity_id in self.known:
                continue
            collectors = self.investigation.deps.collectors
            request = collectors_pb2.GetEntityRequest(id=entity_id, access=self.investigation.access())
            try:  # bookkeeping on our own graph, not an agent's tool call
                entity = await while_starting(functools.partial(collectors.GetEntity, request))
                self.known[entity_id] = entity.value
            except RpcError:
                self.known[entity_id] = entity_id
        return self.known


async def known_names(investigation: Investigation) -> dict[str, str]:
    names: dict[str, str] = {}
    for item in await investigation.deps.store.evidence(investigation.id):
        for entity in _entities_of(item.data):
            names[entity["id"]] = entity["value"]
    return names


def _entities_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "entity" in data:
        return [data["entity"]]
    return list(data.get("entities", []))


async def run_task(agent: Agent, task: Task, names: Names, max_depth: int) -> Outcome:
    """Run one task as `agent`; store what it found as evidence; derive the follow-ups."""
    inv = agent.investigation
    deps = inv.deps
    row = inv.row
    tlp = Tlp(row.tlp)
    if task.kind == "collect":
        request = collectors_pb2.CollectRequest(
            collector=task.collector, target_type=task.target_type, target=task.target, investigation_id=inv.id,
            opsec=bool(row.scope.get("opsec")), tlp=tlp.to_proto())

        async def collect() -> list[dict[str, Any]]:
            return [_observation(obs) async for obs in deps.collectors.Collect(request)]

        args = {"collector": task.collector, "target_type": task.target_type, "target": task.target}
        try:
            observations: list[dict[str, Any]] = _one_per_id(await agent.call(COLLECT, args, collect))
        except Refused as exc:
            return Outcome([], [], refused=str(exc))
        except RpcError as exc:
            return Outcome([], [], error=f"{exc.code.name}: {exc.message}")
        for obs in observations:
            names.known[obs["entity"]["id"]] = obs["entity"]["value"]
        await names.resolve(r[end] for obs in observations for r in obs["relations"]
                            for end in ("source_id", "target_id"))
        rows = [EvidenceRow(
            id=evidence_id(inv.id, "observation", obs["id"]), investigation_id=inv.id, kind="observation",
            uri=obs["source"], collector=obs["collector"], collected_at=datetime.fromtimestamp(obs["observed_at"], UTC),
            tlp=obs["tlp"], content=observation_text(obs, names.known), data=obs) for obs in observations]
        new = await deps.store.add_evidence(rows)
        await _announce(inv, rows, new, names.known)
        follow = follow_ups(task, observations, inv, max_depth)
        return Outcome(new, follow)
    # A graph lookup: what is stored around the entity (feeds, TAXII, earlier collections).
    entity_id = await _entity_id(inv, task)
    if not entity_id:
        return Outcome([], [], error=f"{task.target_type} {task.target} is not in the graph")

    async def lookup() -> dict[str, Any]:
        return _subgraph(await deps.collectors.Neighborhood(
            collectors_pb2.NeighborhoodRequest(entity_id=entity_id, depth=2 if task.depth == 0 else 1, limit=200,
                                               access=inv.access())))

    try:
        graph: dict[str, Any] = await agent.call(NEIGHBORHOOD, {"entity_id": entity_id, "target": task.target}, lookup)
    except Refused as exc:
        return Outcome([], [], refused=str(exc))
    except RpcError as exc:
        return Outcome([], [], error=f"{exc.code.name}: {exc.message}")
    if not graph["relations"]:
        return Outcome([], [])
    for entity in graph["entities"]:
        names.known[entity["id"]] = entity["value"]
    lines = [f"the knowledge graph around {task.target_type} {task.target} holds:"]
    lines += [f"{names.known.get(r['source_id'], r['source_id'])} {r['type']} {names.known.get(r['target_id'], r['target_id'])}"
              for r in graph["relations"]]
    lines += [f"{e['type']} {e['value']}" for e in graph["entities"]]
    item = EvidenceRow(id=evidence_id(inv.id, "graph", entity_id), investigation_id=inv.id, kind="graph",
                       uri=f"graph:{entity_id}", collector="collectors.Neighborhood",
                       collected_at=datetime.now(UTC), tlp=row.tlp, content="\n".join(lines), data=graph)
    new = await deps.store.add_evidence([item])
    await _announce(inv, [item], new, names.known)
    observations = [{"entity": e, "relations": [], "collector": "graph", "source": item.uri} for e in graph["entities"]]
    return Outcome(new, follow_ups(task, observations, inv, max_depth))


def _one_per_id(observations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One observation per id. A page that links to itself, or names a URL twice, yields the same
    observation again; the one that carries the entity's properties (the page's corpus document)
    is kept, with every relation either saw."""
    merged: dict[str, dict[str, Any]] = {}
    for obs in observations:
        kept = merged.get(obs["id"])
        if kept is None:
            merged[obs["id"]] = obs
            continue
        richer, other = ((obs, kept) if len(obs["entity"]["properties"]) > len(kept["entity"]["properties"])
                         else (kept, obs))
        relations = list(richer["relations"]) + [r for r in other["relations"] if r not in richer["relations"]]
        merged[obs["id"]] = {**richer, "relations": relations}
    return list(merged.values())


async def _entity_id(inv: Investigation, task: Task) -> str:
    """The STIX id the graph keeps for a target (deterministic, but computed by the collectors)."""
    cypher = "MATCH (e:Entity) WHERE e.value = $value RETURN e.id, e.type LIMIT 5"
    request = collectors_pb2.GraphQueryRequest(cypher=cypher, params_json=json.dumps({"value": task.target}), limit=5,
                                               access=inv.access(tlp_ceiling=False))
    try:
        answer = await while_starting(lambda: inv.deps.collectors.GraphQuery(request))
    except RpcError:
        return ""
    rows = [json.loads(row) for row in answer.rows_json]
    exact = [r[0] for r in rows if r[1] == task.target_type]
    return str((exact or [r[0] for r in rows] or [""])[0])


async def _announce(inv: Investigation, rows: Sequence[EvidenceRow], new: Sequence[str], names: Mapping[str, str]) -> None:
    fresh = set(new)
    for item in rows:
        if item.id not in fresh:
            continue
        await inv.emit("evidence", evidence=item.id, kind=item.kind, uri=item.uri, collector=item.collector)
        for entity in _entities_of(item.data):
            # The graph's id too: a client draws the investigation's graph from these events and
            # expands a node through /api/v1/graph/neighborhood by it.
            await inv.emit("entity", id=entity.get("id", ""), type=entity["type"], value=entity["value"],
                           evidence=item.id)
        for relation in item.data.get("relations", []):
            await inv.emit("relation", source=names.get(relation["source_id"], relation["source_id"]),
                           type=relation["type"], target=names.get(relation["target_id"], relation["target_id"]),
                           source_id=relation["source_id"], target_id=relation["target_id"], evidence=item.id)


def follow_ups(task: Task, observations: Sequence[Mapping[str, Any]], inv: Investigation, max_depth: int) -> list[Task]:
    """The playbook's next pivots from what a task found (deterministic; the scope is checked when they run)."""
    depth = task.depth + 1
    if depth > max_depth:
        return []
    scope = inv.scope
    page_in_scope = task.collector == "web" and scope.allows_url(task.target)
    out: list[Task] = []
    for obs in observations:
        entity = obs["entity"]
        kind, value = entity["type"], entity["value"]
        if value == task.target:
            continue
        if kind == "url" and value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            host = parts.hostname or ""
            # Widen only for a plain URL: with userinfo or a backslash, what a browser would reach
            # is not what urlsplit reports as the host (and allows_url refuses such URLs anyway).
            plain = not parts.username and "\\" not in value and "@" not in parts.netloc
            if page_in_scope and plain and host and not scope.allows_host(host):
                scope.widen(host, f"named by in-scope page {task.target}")
            if scope.allows_url(value):
                out.append(url_task(value, depth, f"linked from {task.target}"))
        elif kind == "domain-name":
            if page_in_scope and not scope.allows_host(value):
                scope.widen(value, f"named by in-scope page {task.target}")
            if scope.allows_host(value):
                out.append(Task("collect", kind, value, depth, "dns", f"found by {task.collector or 'the graph'}"))
                if task.collector == "web":
                    out.append(Task("collect", kind, value, depth, "whois", f"named by page {task.target}"))
        elif kind in IP_TYPES and task.collector == "dns" and task.depth == 0 \
                and any(r["type"] == "resolves-to" for r in obs["relations"]):
            if scope.note_resolution(task.target, value):  # a routable address of an in-scope name
                out.append(Task("collect", kind, value, depth, "geo", f"where {task.target}'s address is (GeoIP)"))
        elif kind == "x-crypto-address":
            collector = "ethereum" if value.lower().startswith("0x") else "bitcoin"
            if task.collector not in ("bitcoin", "ethereum"):  # the trace follows the flow itself
                out.append(Task("collect", kind, value, depth, collector, "trace the wallet"))
        if kind in LOOKUP_TYPES - {"domain-name", "x-crypto-address"} and task.kind == "collect" and task.collector == "web":
            out.append(Task("neighborhood", kind, value, depth, reason=f"named by {task.target}"))
    return out


async def corpus_excerpts(agent: Agent, query: str, document_ids: set[str], k: int = 6) -> list[str]:
    """Excerpt evidence: spans of this investigation's stored pages that match `query`."""
    inv = agent.investigation
    if not document_ids:
        return []

    async def search() -> list[dict[str, Any]]:
        answer = await inv.deps.embeddings.Search(embeddings_pb2.SearchRequest(query=query, k=40, access=inv.access()))
        return [{"document_id": h.document_id, "start": h.start, "end": h.end, "excerpt": h.excerpt, "uri": h.uri,
                 "title": h.title, "tlp": Tlp.from_proto(h.tlp, Tlp.CLEAR).value} for h in answer.hits]

    try:
        hits: list[dict[str, Any]] = await agent.call(SEARCH, {"query": query}, search)
    except (Refused, RpcError):
        return []
    rows = [EvidenceRow(
        id=evidence_id(inv.id, "excerpt", f"{h['document_id']}:{h['start']}:{h['end']}"), investigation_id=inv.id,
        kind="excerpt", uri=h["uri"], collector="embeddings.Search", collected_at=datetime.now(UTC), tlp=h["tlp"],
        content=h["excerpt"], document_id=h["document_id"], start=h["start"], end=h["end"],
        data={"title": h["title"]}) for h in hits if h["document_id"] in document_ids][:k]
    new = await inv.deps.store.add_evidence(rows)
    for item in rows:
        if item.id in new:
            await inv.emit("evidence", evidence=item.id, kind=item.kind, uri=item.uri, collector=item.collector)
    return [item.id for item in rows]


async def injection_excerpts(agent: Agent, document_id: str, context: int = 160) -> list[str]:
    """Excerpt evidence around every span of a stored page that reads like an instruction to an AI
    (services.swarm.deliberation.INJECTION): the page is data; the analyst should see what it tried."""
    from services.swarm.deliberation import INJECTION

    inv = agent.investigation

    async def fetch() -> dict[str, Any]:
        document = await inv.deps.embeddings.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=document_id,
                                                                                             access=inv.access()))
        return {"text": document.text, "uri": document.uri, "tlp": Tlp.from_proto(document.tlp, Tlp.CLEAR).value}

    try:
        page: dict[str, Any] = await agent.call(GET_DOCUMENT, {"document_id": document_id}, fetch)
    except (Refused, RpcError):
        return []
    rows = []
    for match in INJECTION.finditer(page["text"]):
        start, end = max(0, match.start() - context), min(len(page["text"]), match.end() + context)
        rows.append(EvidenceRow(
            id=evidence_id(inv.id, "excerpt", f"{document_id}:{start}:{end}"), investigation_id=inv.id, kind="excerpt",
            uri=page["uri"], collector="embeddings.GetDocument", collected_at=datetime.now(UTC), tlp=page["tlp"],
            content=page["text"][start:end], document_id=document_id, start=start, end=end))
    new = await inv.deps.store.add_evidence(rows)
    for item in rows:
        if item.id in new:
            await inv.emit("evidence", evidence=item.id, kind=item.kind, uri=item.uri, collector=item.collector)
    return [item.id for item in rows]
