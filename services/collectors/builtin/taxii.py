"""STIX 2.1 bundles (a URL serving one) and TAXII 2.1 collections, normalised into BEV's graph.

TAXII is read over the guarded fetcher rather than taxii2-client: taxii2-client opens its own
`requests` connections, which would bypass the SSRF guard, the byte limit and Tor. The protocol
part is small: GET <collection>/objects/ with the TAXII 2.1 media type, following `more`/`next`
(TAXII 2.1 section 5.4). Objects are parsed and checked with stix2.

Normalisation: cyber observables keep their deterministic ids; named domain objects (malware,
intrusion-set, attack-pattern ...) are keyed by type and name, so the same actor from two feeds is
one node; indicators contribute the observables their pattern compares for equality; relationships
are kept between whatever their ends became. An object stix2 accepts but that has no usable
identifying value (an empty `value`, `name` or hash) is dropped, logged and counted in
bev_collector_dropped_objects_total.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlencode

import stix2
import stix2.exceptions
from prometheus_client import Counter

from bev.telemetry import get_logger
from services.collectors.contract import CollectContext, CollectorError, Finding
from services.collectors.observables import NAMED_SDO_TYPES, Observable, ObservableError, Relation
from services.collectors.settings import CollectorsConfig

TAXII_TYPE = "application/taxii+json"
MAX_PAGES = 100
_SCO_VALUE_TYPES = ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr")
# `[domain-name:value = 'evil.org']`-style equality comparisons inside an indicator pattern.
_PATTERN_EQUALS = re.compile(
    r"(ipv4-addr|ipv6-addr|domain-name|url|email-addr):value\s*=\s*'((?:[^'\\]|\\.)*)'"
    r"|file:hashes\.'?(MD5|SHA-1|SHA-256|SHA-512)'?\s*=\s*'([0-9A-Fa-f]+)'")

# The STIX properties of a named domain object the graph keeps (services.collectors.observables exports them).
SDO_PROPERTIES = ("description", "aliases", "external_references", "is_family", "kill_chain_phases",
                  "first_seen", "last_seen")

DROPPED = Counter("bev_collector_dropped_objects_total", "Objects a collector received but could not use",
                  ["collector", "reason"])

log = get_logger(__name__)


class TaxiiCollector:
    name = "taxii"
    description = "Imports a STIX 2.1 bundle URL or a TAXII 2.1 collection URL (.../collections/<id>/)"
    consumes = frozenset({"url"})
    produces = frozenset({*_SCO_VALUE_TYPES, "file", *NAMED_SDO_TYPES})
    rate_limit_per_s = 2.0
    default_confidence = 70
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        objects = await self._fetch_objects(target.value, ctx)
        for finding in normalise(objects, target.value):
            yield finding

    async def _fetch_objects(self, url: str, ctx: CollectContext) -> list[dict[str, Any]]:
        is_collection = "/collections/" in url
        objects: list[dict[str, Any]] = []
        next_url = url.rstrip("/") + "/objects/" if is_collection else url
        base = next_url
        for _ in range(MAX_PAGES):
            try:
                page = await ctx.fetcher.get(
                    next_url, investigation_id=ctx.investigation_id, opsec=ctx.opsec,
                    accept=[TAXII_TYPE, "application/stix+json", "application/json"],
                    headers={"accept": f"{TAXII_TYPE};version=2.1, application/stix+json;version=2.1, application/json"},
                    api=True)
                envelope = json.loads(page.body)
            except ValueError as exc:
                raise CollectorError(f"{next_url}: not JSON ({exc})") from None
            if not isinstance(envelope, dict):
                raise CollectorError(f"{next_url}: expected a STIX bundle or TAXII envelope object")
            objects.extend(envelope.get("objects", []) or [])
            if not (is_collection and envelope.get("more") and envelope.get("next")):
                return objects
            next_url = f"{base}?{urlencode({'next': envelope['next']})}"
        raise CollectorError(f"{url}: more than {MAX_PAGES} pages")


def _observable_of(obj: dict[str, Any]) -> Observable | None:
    kind = obj.get("type", "")
    try:
        if kind in _SCO_VALUE_TYPES:
            return Observable(kind, str(obj["value"]))
        if kind == "file" and obj.get("hashes"):
            return Observable("file", next(iter(obj["hashes"].values())), {"hashes": dict(obj["hashes"])})
        # `in`, not a truth test: an empty name is malformed and reported below; no name at all is
        # valid STIX for some types (a malware instance) and just not keyable by name.
        if kind in NAMED_SDO_TYPES and "name" in obj:
            props: dict[str, Any] = {key: obj[key] for key in SDO_PROPERTIES if key in obj}
            return Observable(kind, str(obj["name"]), props)
    except ObservableError as exc:
        _dropped(obj, "invalid_value", str(exc))
    return None


def _dropped(obj: dict[str, Any], reason: str, error: str) -> None:
    # Valid enough for stix2 but not for the graph: say so, or a feed quietly loses objects.
    DROPPED.labels(TaxiiCollector.name, reason).inc()
    log.warning("dropped a malformed STIX object", collector=TaxiiCollector.name, reason=reason,
                stix_id=obj.get("id", ""), stix_type=obj.get("type", ""), error=error)


def _pattern_observables(pattern: str) -> list[Observable]:
    found = []
    for match in _PATTERN_EQUALS.finditer(pattern):
        if match.group(1):
            found.append(Observable(match.group(1), match.group(2).replace("\\'", "'")))
        else:
            found.append(Observable("file", match.group(4).lower(), {"hashes": {match.group(3): match.group(4).lower()}}))
    return found


def normalise(raw_objects: Iterable[dict[str, Any]], source: str) -> list[Finding]:
    """STIX objects (validated with stix2) -> findings; unknown object types are skipped."""
    return normalise_counted(raw_objects, source)[0]


def normalise_counted(raw_objects: Iterable[dict[str, Any]], source: str) -> tuple[list[Finding], int]:
    """`normalise`, and how many objects it used (the rest have no place in the graph: other types,
    relationships to them)."""
    used = 0
    by_ref: dict[str, list[Observable]] = {}
    relationships: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for raw in raw_objects:
        try:
            parsed = stix2.parse(raw, allow_custom=True, version="2.1")
        except (stix2.exceptions.STIXError, ValueError) as exc:
            raise CollectorError(f"{source}: invalid STIX object {raw.get('id', '?')}: {exc}") from None
        # A custom type stix2 has no class for (ATT&CK's x-mitre-tactic...) comes back as a plain dict.
        obj = parsed if isinstance(parsed, dict) else json.loads(parsed.serialize())
        if obj["type"] == "relationship":
            relationships.append(obj)
            continue
        if obj["type"] == "indicator":
            observed = _pattern_observables(obj.get("pattern", ""))
            by_ref[obj["id"]] = observed
            findings.extend(Finding(o, source, confidence=int(obj.get("confidence", 0))) for o in observed)
            used += bool(observed)
            continue
        observable = _observable_of(obj)
        if observable is not None:
            by_ref[obj["id"]] = [observable]
            findings.append(Finding(observable, source, confidence=int(obj.get("confidence", 0))))
            used += 1
    for rel in relationships:
        confidence = int(rel.get("confidence", 50))
        ends = [(src, dst) for src in by_ref.get(rel["source_ref"], []) for dst in by_ref.get(rel["target_ref"], [])]
        for src, dst in ends:
            findings.append(Finding(src, source, (Relation(src, dst, rel["relationship_type"], confidence),),
                                    confidence=confidence))
        used += bool(ends)
    return findings, used
