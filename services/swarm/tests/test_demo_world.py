"""The demo world's servers and data, on their own (tests/test_demo_world.py runs the collectors on it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest
import yaml

from services.swarm.demo import DemoWorld, World
from services.swarm.demo.world import WORLD_DIR, script_pubkey

REPO = Path(__file__).resolve().parents[3]
UNLOCK = "bc1qcnaf5z6u2aulcx8xejxyezerck0a6jz4tkqq42"
COLLECTION = "9d6b1c52-5d0e-4c59-8f57-2f6f0e3b7a41"


@pytest.fixture(scope="module")
def world() -> Iterator[DemoWorld]:
    with DemoWorld() as demo:
        yield demo


def _dns(world: DemoWorld, name: str, kind: str) -> dns.message.Message:
    address, port = world.nameserver.rsplit(":", 1)
    return dns.query.udp(dns.message.make_query(name, kind), address, port=int(port), timeout=2)


def _get(world: DemoWorld, host: str, path: str, *, address: str | None = None) -> httpx.Response:
    """GET as the collectors' fetcher does: to the address the name resolves to, the name in Host."""
    address = address or world.world.site_address(host)
    return httpx.get(f"http://{address}:{world.port}{path}", headers={"host": f"{host}:{world.port}"},
                     trust_env=False, timeout=5)


def test_the_world_is_closed_and_fictional() -> None:
    world = World.load()  # checks: names under example.*, web hosts in the block, others documentation-only
    assert world.names >= {"browser-update.example.com", "cdn-updates.example.net", "telemetry-sync.example.org"}
    assert all(name.endswith((".example.com", ".example.net", ".example.org")) for name in world.names)
    assert {world.site_address(name) for name in world.sites} <= {f"127.77.0.{n}" for n in range(256)}
    assert world.resolve("cdn-updates.example.net") == ("127.77.0.11",)  # through its CNAME
    assert world.resolve("www.browser-update.example.com") == ("127.77.0.10",)


def test_dns_answers_from_the_zone_and_logs_the_rest(world: DemoWorld) -> None:
    answer = _dns(world, "browser-update.example.com", "A")
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0].to_text().endswith("IN A 127.77.0.10")
    chain = _dns(world, "cdn-updates.example.net", "A")
    assert [dns.rdatatype.to_text(rrset.rdtype) for rrset in chain.answer] == ["CNAME", "A"]
    assert str(chain.answer[1][0]) == "127.77.0.11"
    txt = _dns(world, "browser-update.example.com", "TXT")
    assert "ip4:198.51.100.25" in txt.answer[0].to_text()
    assert _dns(world, "telemetry-sync.example.org", "MX").answer == []  # known name, no such record
    assert _dns(world, "www.example.com", "A").rcode() == dns.rcode.NXDOMAIN
    outside = world.outside()
    assert [(r.name, r.asked, r.answer) for r in outside if r.protocol == "dns"] == [("www.example.com", "A", "NXDOMAIN")]


def test_web_hosts_serve_their_pages_with_the_port_filled_in(world: DemoWorld) -> None:
    landing = _get(world, "browser-update.example.com", "/")
    assert landing.status_code == 200 and landing.headers["content-type"].startswith("text/html")
    assert f"http://cdn-updates.example.net:{world.port}/download/" in landing.text and "{port}" not in landing.text
    assert "ignore previous instructions" in landing.text
    robots = _get(world, "research.example.org", "/robots.txt")
    assert robots.text == "User-agent: *\nDisallow: /drafts/\n"
    assert _get(world, "research.example.org", "/nope").status_code == 404
    exe = _get(world, "cdn-updates.example.net", "/download/BrowserUpdate.exe")
    assert exe.headers["content-type"] == "application/octet-stream"
    # The hash the reports cite is the served file's.
    assert hashlib.sha256(exe.content).hexdigest() in _get(world, "cdn-updates.example.net", "/download/").text
    # A host served elsewhere, and a host that is not the world's, are misdirected.
    assert _get(world, "cdn-updates.example.net", "/download/", address="127.77.0.10").status_code == 421
    assert _get(world, "intranet.corp", "/", address="127.77.0.10").status_code == 421
    last = world.requests[-1]
    assert (last.protocol, last.name, last.asked, last.answer, last.in_world) == ("http", "intranet.corp", "GET /", "421", False)
    assert last.local == f"127.77.0.10:{world.port}"


def test_esplora_api_serves_the_money_flow(world: DemoWorld) -> None:
    info = _get(world, "esplora.example.net", f"/api/address/{UNLOCK}").json()
    assert info["chain_stats"] == {"funded_txo_count": 2, "funded_txo_sum": 840000, "spent_txo_count": 2,
                                   "spent_txo_sum": 840000, "tx_count": 3}
    txs = _get(world, "esplora.example.net", f"/api/address/{UNLOCK}/txs").json()
    assert [tx["status"]["block_height"] for tx in txs] == [921802, 921377, 921104]  # newest first
    cash_out = txs[0]
    assert {v["prevout"]["scriptpubkey_address"] for v in cash_out["vin"]} == {UNLOCK, "1PWePVEh9p9zrYeu8hYc8SVPQcBs93mb1b"}
    assert cash_out["fee"] == 2500 and cash_out["vout"][0]["scriptpubkey_type"] == "p2sh"
    assert _get(world, "esplora.example.net", f"/api/tx/{cash_out['txid']}").json() == cash_out
    unknown = _get(world, "esplora.example.net", "/api/address/1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2").json()
    assert unknown["chain_stats"]["tx_count"] == 0  # as the real API: any address exists, most are empty
    assert _get(world, "esplora.example.net", "/api/address/not-an-address").status_code == 400


def test_script_pubkeys_match_known_vectors() -> None:
    assert script_pubkey("16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM") == (  # the Bitcoin wiki's worked example
        "76a914010966776006953d5567439e5e39f86a0d273bee88ac", "p2pkh")
    assert script_pubkey("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4") == (  # BIP-173
        "0014751e76e8199196d454941c45d1b3a323f1433bd6", "v0_p2wpkh")


def test_taxii_collection_pages_hold_the_whole_bundle(world: DemoWorld) -> None:
    discovery = _get(world, "taxii.example.org", "/taxii2/")
    assert discovery.headers["content-type"] == "application/taxii+json;version=2.1"
    assert discovery.json()["api_roots"] == [f"http://taxii.example.org:{world.port}/api1/"]
    assert [c["id"] for c in _get(world, "taxii.example.org", "/api1/collections/").json()["collections"]] == [COLLECTION]
    objects, path = [], f"/api1/collections/{COLLECTION}/objects/"
    for _ in range(10):
        page = _get(world, "taxii.example.org", path).json()
        objects += page["objects"]
        if not page["more"]:
            break
        path = f"/api1/collections/{COLLECTION}/objects/?next={page['next']}"
    bundle = json.loads((WORLD_DIR / "stix" / "glass-mantis.json").read_text())
    assert objects == bundle["objects"] and len(objects) > 10
    assert _get(world, "taxii.example.org", "/bundles/glass-mantis.json").json() == bundle


def test_whois_and_ethereum_rpc(world: DemoWorld) -> None:
    address, port = world.whois_server.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=2) as conn:
        conn.sendall(b"browser-update.example.com\r\n")
        answer = b"".join(iter(lambda: conn.recv(4096), b"")).decode()
    assert "Registrant Email: patchwork.admin@mailbox.example.org" in answer
    rpc = httpx.post(f"http://127.77.0.23:{world.port}/", headers={"host": "eth-rpc.example.net"}, trust_env=False,
                     json={"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance", "params": ["0x0", "latest"]})
    assert rpc.json() == {"jsonrpc": "2.0", "id": 7, "result": "0x0"}


def test_collectors_settings_point_only_at_the_world(world: DemoWorld) -> None:
    config = world.collectors_config()
    assert config["fetch"]["allow_ranges"] == ["127.77.0.0/24"] and config["fetch"]["tor_socks_url"] == ""
    assert config["dns"]["nameservers"] == config["fetch"]["nameservers"] == [world.nameserver]
    assert config["bitcoin"]["esplora_url"] == f"http://esplora.example.net:{world.port}/api"
    assert all(world.served(source["url"]) for source in config["feeds"] + config["taxii"])
    env = world.collectors_env()
    assert env["BEV_COLLECTORS__WHOIS__SERVER"] == world.whois_server
    assert json.loads(env["BEV_COLLECTORS__FEEDS"]) == config["feeds"]
    assert json.loads(env["BEV_COLLECTORS__FETCH__NAMESERVERS"]) == [world.nameserver]


def test_ground_truth_names_what_the_world_serves(world: DemoWorld) -> None:
    truth = world.ground_truth()
    assert truth.target == world.target and truth.target in truth.entities
    assert len(truth.entities) >= 30 and len(truth.relations) >= 40
    for kind, value in truth.entities:
        if kind == "domain-name":
            assert value in world.world.names, value
        if kind == "url":
            assert world.served(value), value
    flow = yaml.safe_load((WORLD_DIR / "bitcoin.yaml").read_text())
    assert {v for k, v in truth.entities if k == "x-crypto-address"} == set(flow["addresses"])
    assert truth.never_requested == (f"http://research.example.org:{world.port}/drafts/",)
    recall = truth.recall(truth.entities, set())
    assert (recall.entities, recall.relations) == (1.0, 0.0) and recall.missing_relations == truth.relations


def test_python_dash_m_serves_the_world_and_prints_its_settings() -> None:
    process = subprocess.Popen([sys.executable, "-m", "services.swarm.demo", "--quiet"], cwd=REPO,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("# serving"):
                break
        exports = dict(line[len("export "):].strip().split("=", 1) for line in lines if line.startswith("export "))
        assert "BEV_COLLECTORS__FETCH__ALLOW_RANGES" in exports and "BEV_COLLECTORS__TAXII" in exports
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
