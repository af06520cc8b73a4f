"""Deterministic STIX ids (checked against the stix2 library), the registry, and PII scrubbing."""

from __future__ import annotations

import stix2

from services.collectors.contract import ENTRY_POINT_GROUP, collector_factories
from services.collectors.observables import Observable, Relation, bundle, from_indicator
from services.collectors.pii import scrub_pii

SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_sco_ids_are_the_ones_stix2_computes() -> None:
    pairs = [
        (Observable("ipv4-addr", "203.0.113.7"), stix2.IPv4Address(value="203.0.113.7")),
        (Observable("ipv6-addr", "2001:db8::1"), stix2.IPv6Address(value="2001:db8::1")),
        (Observable("domain-name", "evil.example"), stix2.DomainName(value="evil.example")),
        (Observable("url", "https://evil.example/a?b=c"), stix2.URL(value="https://evil.example/a?b=c")),
        (Observable("email-addr", "ops@evil.example"), stix2.EmailAddress(value="ops@evil.example")),
        (from_indicator("sha256", SHA256), stix2.File(hashes={"SHA-256": SHA256})),
        (Observable("file", "x", {"hashes": {"SHA-256": SHA256, "MD5": "d41d8cd98f00b204e9800998ecf8427e"}}),
         stix2.File(hashes={"SHA-256": SHA256, "MD5": "d41d8cd98f00b204e9800998ecf8427e"})),
        (Observable("autonomous-system", "64500"), stix2.AutonomousSystem(number=64500)),
        (Observable("domain-name", "bücher.example"), stix2.DomainName(value="bücher.example")),
    ]
    for ours, theirs in pairs:
        assert ours.id == theirs.id, ours


def test_ids_are_stable_and_distinct() -> None:
    cve = from_indicator("cve", "CVE-2021-44228")
    assert cve.id == from_indicator("cve", "CVE-2021-44228").id and cve.id.startswith("vulnerability--")
    btc = from_indicator("btc_address", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
    eth = from_indicator("eth_address", "0xde0b295669a9fd93d5f28d9ec85e40f4cb697bae")
    assert btc.id != eth.id and btc.properties["currency"] == "BTC"
    a, b = Observable("domain-name", "a.example"), Observable("ipv4-addr", "192.0.2.1")
    assert Relation(a, b, "resolves-to").id == Relation(a, b, "resolves-to").id != Relation(b, a, "resolves-to").id
    assert bundle([{"id": a.id}, {"id": b.id}])["id"] == bundle([{"id": b.id}, {"id": a.id}])["id"]


def test_registry_loads_builtins_and_names_its_entry_point_group() -> None:
    factories = collector_factories()
    assert {"dns", "whois", "web", "tor", "document", "feed", "taxii", "bitcoin", "ethereum"} <= set(factories)
    assert ENTRY_POINT_GROUP == "bev.collectors"


def test_pii_scrubbing() -> None:
    text = ("Contact j.doe+ops@corp.example or +44 20 7946 0958 / (212) 555-0199. Card 4111 1111 1111 1111, "
            "not 4111 1111 1111 1112. SSN 078-05-1120. C2 203.0.113.7, build 2026-10-14.")
    scrubbed = scrub_pii(text)
    assert scrubbed == ("Contact [EMAIL] or [PHONE] / [PHONE]. Card [CARD], "
                        "not 4111 1111 1111 1112. SSN [SSN]. C2 203.0.113.7, build 2026-10-14.")
