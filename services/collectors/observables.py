"""Observables and relations in STIX 2.1 terms, with deterministic ids, and STIX bundle export.

Every entity BEV stores is a STIX 2.1 object. Cyber observables (SCOs) get the id STIX 2.1
section 2.9 defines: UUIDv5 in the SCO namespace over the JSON-canonicalised id-contributing
properties, so the same observable seen twice, by two collectors, on two machines, is the same
node. It is computed here rather than by building a stix2 object per entity (about 40x slower,
and ids are on the hot path of every upsert); tests check both agree for every type.

Types we do not find in core STIX get the nearest standard object: a CVE is a `vulnerability`
SDO (id UUIDv5 over its name, so it deduplicates too); a wallet is the custom observable
`x-crypto-address` (STIX 2.1 allows custom `x-` objects; the validator accepts them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bev import stix
from bev.stix import BEV_NAMESPACE, NAMED_SDO_TYPES, SCO_NAMESPACE, bundle, relationship_id

# The shared id scheme, re-exported.
__all__ = ["BEV_NAMESPACE", "NAMED_SDO_TYPES", "SCO_NAMESPACE", "bundle", "relationship_id"]

HASH_KEYS = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512"}

# Indicator type (services.collectors.indicators) -> STIX type.
INDICATOR_STIX_TYPES: dict[str, str] = {
    "ipv4": "ipv4-addr",
    "ipv6": "ipv6-addr",
    "domain": "domain-name",
    "url": "url",
    "email": "email-addr",
    "md5": "file",
    "sha1": "file",
    "sha256": "file",
    "sha512": "file",
    "cve": "vulnerability",
    "btc_address": "x-crypto-address",
    "eth_address": "x-crypto-address",
}

# Observable types a CollectRequest may name, and what `value` means for each.
OBSERVABLE_TYPES: frozenset[str] = frozenset(
    {"ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr", "file", "x-crypto-address",
     "autonomous-system", "note", "user-account", "location"}
) | NAMED_SDO_TYPES

class ObservableError(ValueError):
    """An observable that cannot be represented (unknown type, empty value)."""


@dataclass(frozen=True)
class Observable:
    """One entity: its STIX type, the value that identifies it, and further STIX properties."""

    type: str
    value: str
    properties: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.type not in OBSERVABLE_TYPES:
            raise ObservableError(f"unknown observable type {self.type!r}; one of {sorted(OBSERVABLE_TYPES)}")
        if not self.value:
            raise ObservableError(f"{self.type} needs a value")

    @property
    def id(self) -> str:
        return stix_id(self)


@dataclass(frozen=True)
class Relation:
    """A directed, typed edge between two observables, as a STIX relationship."""

    source: Observable
    target: Observable
    type: str  # STIX relationship_type: resolves-to, links-to, sent-to, related-to ...
    confidence: int = 50

    @property
    def id(self) -> str:
        return relationship_id(self.source.id, self.type, self.target.id)


def id_contributing(observable: Observable) -> dict[str, Any]:
    """The properties STIX 2.1 hashes for this type's deterministic id."""
    try:
        return stix.id_contributing(observable.type, observable.value, observable.properties)
    except ValueError as exc:
        raise ObservableError(str(exc)) from None


def stix_id(observable: Observable) -> str:
    """The id the scheme in bev.stix gives it (the same in every service that writes STIX)."""
    try:
        return stix.object_id(observable.type, observable.value, observable.properties)
    except ValueError as exc:
        raise ObservableError(str(exc)) from None


def from_indicator(type_name: str, value: str) -> Observable:
    """An extracted indicator (services.collectors.indicators) as an observable."""
    stix_type = INDICATOR_STIX_TYPES.get(type_name)
    if stix_type is None:
        raise ObservableError(f"no STIX type for indicator type {type_name!r}")
    if stix_type == "file":
        return Observable("file", value, {"hashes": {HASH_KEYS[type_name]: value}})
    if stix_type == "x-crypto-address":
        return Observable(stix_type, value, {"currency": "BTC" if type_name == "btc_address" else "ETH"})
    return Observable(stix_type, value)


# --- STIX export ---------------------------------------------------------------------------------

STIX_TIMESTAMP = "%Y-%m-%dT%H:%M:%S.000Z"


def to_stix_object(entity_id: str, type_name: str, value: str, properties: Mapping[str, Any],
                   created: str) -> dict[str, Any]:
    """A stored entity as a STIX 2.1 JSON object (SDOs get created/modified from their provenance)."""
    if type_name in NAMED_SDO_TYPES:
        obj: dict[str, Any] = {"type": type_name, "spec_version": "2.1", "id": entity_id, "created": created,
                               "modified": created, "name": value}
        # Kept only when the object they came from had them, so each is valid for its type.
        for key in ("description", "aliases", "external_references", "kill_chain_phases", "first_seen", "last_seen"):
            if key in properties:
                obj[key] = properties[key]
        if type_name == "malware":
            obj["is_family"] = bool(properties.get("is_family", True))
        if type_name == "vulnerability" and value.upper().startswith("CVE-") and "external_references" not in obj:
            obj["external_references"] = [{"source_name": "cve", "external_id": value.upper()}]
        return obj
    match type_name:
        case "note":
            return {"type": "note", "spec_version": "2.1", "id": entity_id, "created": created, "modified": created,
                    "content": properties.get("content", value), "abstract": value[:200],
                    "object_refs": list(properties.get("object_refs", [])) or [entity_id]}
        case "file":
            return {"type": "file", "spec_version": "2.1", "id": entity_id, "hashes": dict(properties["hashes"])}
        case "autonomous-system":
            obj = {"type": type_name, "spec_version": "2.1", "id": entity_id, "number": int(value)}
            if "name" in properties:
                obj["name"] = properties["name"]
            return obj
        case "x-crypto-address":
            return {"type": type_name, "spec_version": "2.1", "id": entity_id, "value": value,
                    "currency": properties.get("currency", "")}
        case "user-account":
            account_type, login = stix.account_of(value)
            obj = {"type": type_name, "spec_version": "2.1", "id": entity_id,
                   "account_login": properties.get("account_login") or login}
            if properties.get("account_type") or account_type:
                obj["account_type"] = properties.get("account_type") or account_type
            for key in ("user_id", "display_name", "account_created"):
                if properties.get(key):
                    obj[key] = properties[key]
            return obj
        case "location":
            obj = {"type": "location", "spec_version": "2.1", "id": entity_id, "created": created,
                   "modified": created, "name": properties.get("name") or value}
            for key in ("latitude", "longitude", "precision", "country", "administrative_area", "region", "city"):
                if properties.get(key) not in (None, ""):
                    obj[key] = properties[key]
            if "country" not in obj and ("latitude" not in obj or "longitude" not in obj):
                obj["country"] = value  # a country's location: its value is the ISO code
            return obj
        case _:
            return {"type": type_name, "spec_version": "2.1", "id": entity_id, "value": value}


def to_stix_relationship(rel_id: str, source_id: str, rel_type: str, target_id: str, confidence: int,
                         created: str) -> dict[str, Any]:
    return {"type": "relationship", "spec_version": "2.1", "id": rel_id, "created": created, "modified": created,
            "relationship_type": rel_type, "source_ref": source_id, "target_ref": target_id,
            "confidence": max(0, min(100, confidence))}


