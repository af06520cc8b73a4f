"""The fleet's STIX id scheme, shared by every service that writes STIX (the collectors' graph, the
swarm's report export): the same object gets the same id wherever it is written."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

# STIX 2.1 section 2.9: the namespace of deterministic SCO ids.
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# Our namespace for ids STIX leaves random (SDOs, relationships): deterministic so re-runs dedupe.
BEV_NAMESPACE = uuid.uuid5(SCO_NAMESPACE, "bev")


# STIX domain objects the graph identifies by their name (imported from bundles and TAXII collections).
NAMED_SDO_TYPES: frozenset[str] = frozenset(
    {"vulnerability", "malware", "threat-actor", "intrusion-set", "attack-pattern", "tool", "campaign", "identity",
     "course-of-action"}
)
HASH_PREFERENCE = ("MD5", "SHA-1", "SHA-256", "SHA-512")  # STIX's choice when several are known
# A hex digest's algorithm by its length (a bare hash in a report or a question).
HASH_BY_LENGTH = {32: "MD5", 40: "SHA-1", 64: "SHA-256", 128: "SHA-512"}


def id_contributing(stix_type: str, value: str, properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The properties STIX 2.1 hashes for this type's deterministic id (ValueError: a file without hashes)."""
    properties = properties or {}
    match stix_type:
        case "file":
            hashes: Mapping[str, str] = properties.get("hashes") or {}
            # The hash the file is known by (its value) decides, so a sample analysed with all its
            # hashes and a report naming its SHA-256 are one node; STIX's preference order otherwise.
            for key in HASH_PREFERENCE:
                if str(hashes.get(key, "")).lower() == value.lower():
                    return {"hashes": {key: hashes[key]}}
            for key in HASH_PREFERENCE:
                if key in hashes:
                    return {"hashes": {key: hashes[key]}}
            raise ValueError("a file observable needs properties.hashes")
        case "autonomous-system":
            return {"number": int(value)}
        case "x-crypto-address":
            return {"currency": properties.get("currency", ""), "value": value}
        case "user-account":
            account_type, login = account_of(value)
            return {"account_login": str(properties.get("account_login") or login),
                    "account_type": str(properties.get("account_type") or account_type)}
        case _:
            return {"value": value}


def object_id(stix_type: str, value: str, properties: Mapping[str, Any] | None = None) -> str:
    """The id of the object `value` names: STIX 2.1's deterministic SCO id, or for a named domain
    object (and a note), a UUIDv5 of its type and name, which STIX leaves random."""
    if stix_type in NAMED_SDO_TYPES or stix_type in ("note", "location"):
        return f"{stix_type}--{uuid.uuid5(BEV_NAMESPACE, f'{stix_type}:{value}')}"
    # RFC 8785 canonical JSON for the string/int/dict values id-contributing properties hold.
    canonical = json.dumps(id_contributing(stix_type, value, properties), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return f"{stix_type}--{uuid.uuid5(SCO_NAMESPACE, canonical)}"


def account_of(value: str) -> tuple[str, str]:
    """A social account's (STIX account_type, account_login) from its handle as BEV writes it:
    ``@user@instance`` is a fediverse (Mastodon/ActivityPub) account, ``@handle.example`` a Bluesky
    one (an AT Protocol handle is a domain name) as is ``@did:plc:...`` (an account known only by
    its DID); anything else is an account of unknown type."""
    handle = value.strip()
    if handle.startswith("@") and handle.count("@") == 2:
        return "mastodon", handle[1:].lower()
    if handle.startswith("@did:") or (handle.startswith("@") and "." in handle and "@" not in handle[1:]):
        return "bluesky", handle[1:].lower()
    return "", handle


def location_value(latitude: float, longitude: float) -> str:
    """A point's value in the graph: latitude,longitude to 4 decimals (about 11 m), so the same place
    found twice is one location node. A country's location is its ISO 3166-1 alpha-2 code instead."""
    return f"{latitude:.4f},{longitude:.4f}"


def relationship_id(source_id: str, relationship_type: str, target_id: str) -> str:
    return f"relationship--{uuid.uuid5(BEV_NAMESPACE, f'{source_id}|{relationship_type}|{target_id}')}"


def bundle(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    items = list(objects)
    # The bundle id hashes its contents: exporting the same objects twice gives the same bundle.
    digest = uuid.uuid5(BEV_NAMESPACE, "|".join(sorted(item["id"] for item in items)))
    return {"type": "bundle", "id": f"bundle--{digest}", "objects": items}
