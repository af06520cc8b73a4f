"""The fleet's STIX id scheme, shared by every service that writes STIX (the collectors' graph, the
swarm's report export): the same object gets the same id wherever it is written."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

# STIX 2.1 section 2.9: the namespace of deterministic SCO ids.
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# Our namespace for ids STIX leaves random (SDOs, relationships): deterministic so re-runs dedupe.
BEV_NAMESPACE = uuid.uuid5(SCO_NAMESPACE, "bev")


def relationship_id(source_id: str, relationship_type: str, target_id: str) -> str:
    return f"relationship--{uuid.uuid5(BEV_NAMESPACE, f'{source_id}|{relationship_type}|{target_id}')}"


def bundle(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    items = list(objects)
    # The bundle id hashes its contents: exporting the same objects twice gives the same bundle.
    digest = uuid.uuid5(BEV_NAMESPACE, "|".join(sorted(item["id"] for item in items)))
    return {"type": "bundle", "id": f"bundle--{digest}", "objects": items}
