"""Each built-in collector against its local fixture server, stored through the real graph and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import cast

import pytest

from bev.vocab import Tlp
from services.collectors.collection import Collection, CollectionRequest, StoredFinding
from services.collectors.contract import (
    Collector,
    CollectorError,
    InvalidTarget,
    TargetRefused,
    collector_factories,
)
from services.collectors.fetch import Fetcher
from services.collectors.observables import Observable
from services.collectors.settings import FetchConfig
from services.collectors.testing import DnsFixture, HttpFixture, Recorded, SocksProxy, WhoisFixture

DATA = Path(__file__).parent / "data"


async def _collect(collection: Collection, collector: str, kind: str, value: str, *, inv: str = "",
                   opsec: bool = False, tlp: str = "clear", confidence: int = 0) -> list[StoredFinding]:
    request = CollectionRequest(collector, Observable(kind, value), investigation_id=inv or "t-" + uuid.uuid4().hex[:6],
                                # a label on purpose: __post_init__ parses it, and refuses an unknown one
                                opsec=opsec, tlp=cast(Tlp, tlp), confidence=confidence)
    return [stored async for stored in collection.run(request)]


def _values(found: list[StoredFinding], kind: str) -> set[str]:
    return {s.entity.value for s in found if s.entity.type == kind}


def _edges(found: list[StoredFinding]) -> set[tuple[str, str, str]]:
    return {(r.source_id, r.type, r.target_id) for s in found for r in s.relations}


def test_every_builtin_satisfies_the_contract(collection: Collection) -> None:
    builtins = {"dns", "whois", "web", "feed", "taxii", "bitcoin", "ethereum", "tor", "document", "malware", "social", "geo"}
    assert set(collector_factories()) >= builtins  # registered as entry points in pyproject.toml
    for collector in collection.collectors.values():
        assert isinstance(collector, Collector)
        assert collector.consumes and collector.produces and collector.rate_limit_per_s > 0


async def test_dns_records_become_entities_and_collecting_twice_changes_nothing(
        collection: Collection, dns_fixture: DnsFixture) -> None:
    dns_fixture.add("glassharbor.test", "A", "203.0.113.45")
    dns_fixture.add("glassharbor.test", "AAAA", "2001:db8::45")
    dns_fixture.add("glassharbor.test", "MX", "10 mail.glassharbor.test.")
    dns_fixture.add("glassharbor.test", "NS", "ns1.bulletproof-dns.example.", "ns2.bulletproof-dns.example.")
    dns_fixture.add("glassharbor.test", "TXT", '"v=spf1 ip4:198.51.100.9 include:spf.mailer.net ~all"')
    found = await _collect(collection, "dns", "domain-name", "glassharbor.test", inv="dns-1")
    domain = Observable("domain-name", "glassharbor.test")
    assert _values(found, "ipv4-addr") == {"203.0.113.45", "198.51.100.9"}
    assert _values(found, "ipv6-addr") == {"2001:db8::45"}
    assert {"mail.glassharbor.test", "ns1.bulletproof-dns.example", "spf.mailer.net"} <= _values(found, "domain-name")
    assert (domain.id, "resolves-to", Observable("ipv4-addr", "203.0.113.45").id) in _edges(found)
    assert (domain.id, "mail-server", Observable("domain-name", "mail.glassharbor.test").id) in _edges(found)

    graph_before = await collection.graph.subgraph([domain.id], 2, 1000)
    observations_before = await collection.observations.count()
    again = await _collect(collection, "dns", "domain-name", "glassharbor.test", inv="dns-1")
    assert {s.observation.id for s in again} == {s.observation.id for s in found}
    assert await collection.graph.subgraph([domain.id], 2, 1000) == graph_before
    assert await collection.observations.count() == observations_before
    stored = await collection.observations.for_entity(domain.id)
    assert [(o.collector, o.tlp, o.confidence) for o in stored] == [("dns", "clear", 90)]


async def test_dns_refuses_opsec_investigations_and_reports_missing_names(
        collection: Collection, dns_fixture: DnsFixture) -> None:
    with pytest.raises(CollectorError, match="OPSEC"):
        await _collect(collection, "dns", "domain-name", "glassharbor.test", opsec=True)
    found = await _collect(collection, "dns", "domain-name", "no-such-name.test")
    assert [s.entity.value for s in found] == ["no-such-name.test"]  # the asked name only


async def test_web_page_text_links_and_indicators(collection: Collection, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/blog/glass-harbor.html", (DATA / "threat-blog.html").read_bytes())
    found = await _collect(collection, "web", "url", url, tlp="amber", confidence=75)
    page = found[0]
    assert page.entity.value == url
    assert json.loads(page.entity.props)["title"].startswith("Operation Glass Harbor")
    assert page.finding.document is not None and b"HarborLoader" in page.finding.document.content
    assert {http_fixture.url("/research/harborloader-yara.html"), "https://www.cisa.example/advisories/aa26-287a",
            http_fixture.url("/privacy")} <= _values(found, "url")
    assert "track-parcel.example-delivery.com" in _values(found, "domain-name")
    assert "cdn-sync.harbor-ops.net" in _values(found, "domain-name")
    assert _values(found, "ipv4-addr") == {"203.0.113.45"}
    assert _values(found, "email-addr") == {"dispatch@harbor-ops.net"}
    assert _values(found, "vulnerability") == {"CVE-2025-21298"}
    assert _values(found, "x-crypto-address") == {"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"}
    assert {s.observation.tlp for s in found} == {"amber"}
    assert all(r.type in ("links-to", "related-to") for s in found for r in s.relations)


async def test_web_refusals_are_typed(collection: Collection, http_fixture: HttpFixture) -> None:
    with pytest.raises(TargetRefused, match=r"robots\.txt"):
        await _collect(collection, "web", "url", http_fixture.serve("/private/x.html", "<p>x</p>"))
    with pytest.raises(TargetRefused, match=r"not a public address|blocked range"):
        await _collect(collection, "web", "url", "http://10.0.0.8/admin")
    with pytest.raises(InvalidTarget, match="consumes url"):
        await _collect(collection, "web", "domain-name", "example.com")
    with pytest.raises(InvalidTarget, match="TLP"):
        await _collect(collection, "web", "url", "http://127.0.0.1/", tlp="purple")


@pytest.mark.parametrize(("name", "content_type"), [("feed.rss", "application/rss+xml"),
                                                   ("feed.atom", "application/atom+xml")])
async def test_feeds(collection: Collection, http_fixture: HttpFixture, name: str, content_type: str) -> None:
    url = http_fixture.serve(f"/feeds/{name}", (DATA / name).read_bytes(), content_type)
    found = await _collect(collection, "feed", "url", url)
    if name == "feed.rss":
        assert {"https://cert.example/advisories/2026-017", "https://cert.example/advisories/2026-016"} <= _values(found, "url")
        assert _values(found, "ipv4-addr") == {"198.51.100.77"}
        assert "update-gw.badcdn.org" in _values(found, "domain-name")
        assert _values(found, "vulnerability") == {"CVE-2026-1234"}
        assert _values(found, "email-addr") == {"refunds@tax-refund-portal.net"}
    else:
        assert _values(found, "file") == {"44d88612fea8a8f36de82e1278abb02f"}
        assert _values(found, "ipv4-addr") == {"192.0.2.200"}


async def test_taxii_collection_pages_and_stix_normalisation(collection: Collection, http_fixture: HttpFixture) -> None:
    base = "/taxii2/api1/collections/91a7b528-80eb-42ed-a74d-c6fbd5a26116"
    taxii = "application/taxii+json;version=2.1"
    http_fixture.serve(f"{base}/objects/", (DATA / "taxii-page1.json").read_bytes(), taxii)
    http_fixture.serve(f"{base}/objects/?next=page-2", (DATA / "taxii-page2.json").read_bytes(), taxii)
    found = await _collect(collection, "taxii", "url", http_fixture.url(base + "/"))
    assert _values(found, "domain-name") == {"c2.glassharbor.example"}
    assert _values(found, "malware") == {"HarborLoader"}
    assert _values(found, "intrusion-set") == {"Glass Harbor"}
    assert _values(found, "ipv4-addr") == {"198.51.100.3"}
    harbor = Observable("malware", "HarborLoader")
    assert (Observable("domain-name", "c2.glassharbor.example").id, "indicates", harbor.id) in _edges(found)
    assert (Observable("intrusion-set", "Glass Harbor").id, "uses", harbor.id) in _edges(found)
    bundle_url = http_fixture.serve("/stix/bundle.json", json.dumps(
        {"type": "bundle", "id": "bundle--6a3a1b7e-2d63-4c8e-9b61-0c2b9b2f8a11",
         "objects": json.loads((DATA / "taxii-page2.json").read_text())["objects"]}), "application/stix+json")
    assert _values(await _collect(collection, "taxii", "url", bundle_url), "intrusion-set") == {"Glass Harbor"}


async def test_bitcoin_trace_depth_fanout_and_clustering(collection: Collection, http_fixture: HttpFixture) -> None:
    for path, body in json.loads((DATA / "esplora.json").read_text()).items():
        http_fixture.serve(f"/esplora/api{path}", json.dumps(body), "application/json")
    target = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
    found = await _collect(collection, "bitcoin", "x-crypto-address", target)
    visited = [p for _, p, _ in http_fixture.requests if p.startswith("/esplora/api/address/") and not p.endswith("/txs")]
    # depth 2 from the target: its counterparties, then theirs; the co-spent input is not walked.
    assert {p.rsplit("/", 1)[1] for p in visited} >= {target, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
                                                       "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
                                                       "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"}
    btc = {value: Observable("x-crypto-address", value, {"currency": "BTC"}).id for value in _values(found, "x-crypto-address")}
    edges = _edges(found)
    assert (btc[target], "sent-to", btc["1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"]) in edges
    assert (btc["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"], "sent-to", btc[target]) in edges
    # Co-spent inputs point at the cluster's smallest address.
    assert (btc["3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"], "same-owner", btc[target]) in edges
    assert (btc["1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"], "sent-to", btc["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"]) in edges
    entity = await collection.graph.get_entity(btc[target])
    assert entity is not None and json.loads(entity.props)["tx_count"] == 2
    with pytest.raises(InvalidTarget, match="checksum"):
        await _collect(collection, "bitcoin", "x-crypto-address", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3")


async def test_ethereum_json_rpc(collection: Collection, http_fixture: HttpFixture) -> None:
    answers = {"eth_getBalance": "0x1bc16d674ec80000", "eth_getTransactionCount": "0x2a", "eth_getCode": "0x"}

    def rpc(body: bytes) -> Recorded:
        call = json.loads(body)
        answer = {"jsonrpc": "2.0", "id": call["id"], "result": answers[call["method"]]}
        return Recorded(200, "application/json", json.dumps(answer).encode())

    http_fixture.routes["/eth-rpc"] = rpc
    found = await _collect(collection, "ethereum", "x-crypto-address", "0xde0B295669a9FD93d5F28D9Ec85E40f4cb697BAe")
    props = json.loads(found[0].entity.props)
    assert found[0].entity.value == "0xde0b295669a9fd93d5f28d9ec85e40f4cb697bae"
    assert (props["balance_wei"], props["nonce"], props["is_contract"]) == ("2000000000000000000", 42, False)


async def test_whois_follows_a_referral(collection: Collection, whois_fixture: WhoisFixture) -> None:
    registrar = (DATA / "whois-registrar.txt").read_text()
    whois_fixture.answers["harbor-ops.net"] = registrar
    found = await _collect(collection, "whois", "domain-name", "harbor-ops.net")
    props = json.loads(found[0].entity.props)
    assert (props["registrar"], props["created"]) == ("Example Registrar, LLC", "2026-08-01T09:14:07Z")
    assert {"ns1.bulletproof-dns.example", "ns2.bulletproof-dns.example"} <= _values(found, "domain-name")
    assert _values(found, "email-addr") == {"abuse@registrar-example.net"}
    whois_fixture.answers["referred.test"] = "refer:        localhost\n\ndomain:       TEST\n"
    asked = whois_fixture.queries.count("referred.test")
    found = await _collect(collection, "whois", "domain-name", "referred.test")
    assert whois_fixture.queries.count("referred.test") == asked + 2  # the referral was followed once
    assert found[0].observation.source == f"whois://localhost:{whois_fixture.port}/referred.test"


async def test_pii_scrubbing_before_storage(collection: Collection, http_fixture: HttpFixture) -> None:
    page = ("<html><head><title>Leak: call +1 415-555-0134</title></head><body><p>Dump posted by "
            "seller@darkmail.net with card 4111 1111 1111 1111 and C2 198.51.100.23.</p></body></html>")
    url = http_fixture.serve("/pii/leak.html", page)
    collection.scrub_pii = True
    found = await _collect(collection, "web", "url", url)
    assert _values(found, "email-addr") == set()
    assert _values(found, "ipv4-addr") == {"198.51.100.23"}
    assert json.loads(found[0].entity.props)["title"] == "Leak: call [PHONE]"
    assert found[0].finding.document is not None
    assert b"[EMAIL]" in found[0].finding.document.content and b"4111" not in found[0].finding.document.content


async def test_tor_collector_goes_only_through_the_socks_proxy(
        collection: Collection, http_fixture: HttpFixture, socks_proxy: SocksProxy) -> None:
    config = FetchConfig(allow_ranges=["127.0.0.0/8"], per_domain_rate_per_s=1000, tor_socks_url=socks_proxy.url)
    await collection.fetcher.close()
    collection.fetcher = Fetcher(config)
    url = http_fixture.serve("/hidden/market.html", (DATA / "threat-blog.html").read_bytes())
    found = await _collect(collection, "tor", "url", url, inv="inv-a")  # the proxy's only credentials
    assert found[0].entity.value == url and "203.0.113.45" in _values(found, "ipv4-addr")
    assert http_fixture.peers("/hidden/market.html") == [socks_proxy.outgoing_address]


async def test_documents_are_fetched_whole_for_the_corpus(collection: Collection, http_fixture: HttpFixture) -> None:
    report = ("# Glass Harbor IOC list\n\n- C2: 203.0.113.45\n- Loader SHA-256: "
              "3f786850e387550fdab836ed7e6dc881de23001b3b0a4cdc3e1f6a7b2d4c5e9a\n- CVE-2025-21298\n")
    url = http_fixture.serve("/reports/glass-harbor.md", report, "text/markdown; charset=utf-8")
    found = await _collect(collection, "document", "url", url)
    document = found[0].finding.document
    assert document is not None and (document.media_type, document.title) == ("text/markdown", "glass-harbor.md")
    assert document.content == report.encode()
    assert _values(found, "vulnerability") == {"CVE-2025-21298"} and _values(found, "ipv4-addr") == {"203.0.113.45"}
    with pytest.raises(TargetRefused, match="Content-Type application/zip"):
        await _collect(collection, "document", "url", http_fixture.serve("/reports/x.zip", b"PK\x03\x04", "application/zip"))
