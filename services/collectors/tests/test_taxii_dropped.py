"""TAXII/STIX import: an object stix2 accepts but the graph cannot key is dropped, logged and counted,
and the rest of the bundle is still collected."""

from __future__ import annotations

import json
import uuid

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.collectors.collection import Collection, CollectionRequest
from services.collectors.observables import Observable
from services.collectors.testing import HttpFixture

EMPTY_DOMAIN = "domain-name--0d5f6c1e-3b7a-5c2e-9f41-6a8b2c7d9e10"
EMPTY_NAME = "malware--5b0e3a8c-1d2f-4e6a-9b7c-8d9e0f1a2b3c"
UNNAMED_MALWARE = "malware--7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"  # valid STIX: a malware instance needs no name


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value(
        "bev_collector_dropped_objects_total", {"collector": "taxii", "reason": reason}) or 0.0


async def test_malformed_stix_objects_are_dropped_logged_and_counted(
        collection: Collection, http_fixture: HttpFixture) -> None:
    stamp = {"spec_version": "2.1", "created": "2026-09-02T10:00:00.000Z", "modified": "2026-09-02T10:00:00.000Z"}
    objects = [
        {"type": "domain-name", "spec_version": "2.1", "id": EMPTY_DOMAIN, "value": ""},
        {"type": "malware", **stamp, "id": EMPTY_NAME, "name": "", "is_family": False},
        {"type": "malware", **stamp, "id": UNNAMED_MALWARE, "is_family": False},
        {"type": "domain-name", "spec_version": "2.1", "id": "domain-name--3c10e5b5-8a0d-5b1e-9f0c-2c4b6a8d0e12",
         "value": "c2.glassharbor.example"},
        {"type": "intrusion-set", **stamp, "id": "intrusion-set--4e78f46f-a023-4e5f-bc24-71b3ca22ec29",
         "name": "Glass Harbor"},
    ]
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    url = http_fixture.serve(f"/stix/dropped-{uuid.uuid4().hex[:8]}.json", json.dumps(bundle),
                             "application/stix+json")
    before = _dropped("invalid_value")

    request = CollectionRequest("taxii", Observable("url", url), investigation_id="t-" + uuid.uuid4().hex[:6])
    with capture_logs() as logs:
        found = [stored async for stored in collection.run(request)]

    assert {(s.entity.type, s.entity.value) for s in found} >= {
        ("domain-name", "c2.glassharbor.example"), ("intrusion-set", "Glass Harbor")}
    assert _dropped("invalid_value") == before + 2
    drops = [entry for entry in logs if entry["event"] == "dropped a malformed STIX object"]
    assert {(d["stix_id"], d["stix_type"]) for d in drops} == {(EMPTY_DOMAIN, "domain-name"),
                                                               (EMPTY_NAME, "malware")}
    assert all(d["log_level"] == "warning" and d["collector"] == "taxii" and d["reason"] == "invalid_value"
               and "needs a value" in d["error"] for d in drops)
