"""The demo world's data (the files under world/): the case, its DNS zone, web sites, WHOIS records,
money flow, and the ground truth an investigation of its target is scored against.

Everything here is pure: loading and building answers. The servers are in server.py (DemoWorld).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import yaml

WORLD_DIR = Path(__file__).with_name("world")
PORT_MARK = "{port}"  # in served bodies and URLs: the port the world's web hosts listen on

TAXII_TYPE = "application/taxii+json;version=2.1"
_SUFFIX_TYPES = {
    ".html": "text/html; charset=utf-8", ".xml": "application/xml", ".json": "application/json",
    ".js": "application/javascript", ".txt": "text/plain; charset=utf-8", ".jpg": "image/jpeg",
}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/rss+xml", "application/atom+xml",
               "application/javascript", "application/stix+json", "application/taxii+json")
_RECORD_TYPES = frozenset({"A", "AAAA", "MX", "NS", "TXT", "CNAME"})


class WorldError(ValueError):
    """The world's files are inconsistent; str() says where."""


def localize(value: Any, port: int) -> Any:
    """`value` (a string, or lists and dicts of them) with every "{port}" replaced by `port`."""
    if isinstance(value, str):
        return value.replace(PORT_MARK, str(port))
    if isinstance(value, list):
        return [localize(item, port) for item in value]
    if isinstance(value, dict):
        return {key: localize(item, port) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, Content-Type, body (with "{port}" still in it, for text types)."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_text(self) -> bool:
        return self.content_type.startswith(_TEXT_TYPES)

    @classmethod
    def json(cls, data: Any, status: int = 200, content_type: str = "application/json") -> Answer:
        return cls(status, content_type, json.dumps(data, indent=1).encode())

    @classmethod
    def text(cls, text: str, status: int) -> Answer:
        return cls(status, "text/plain; charset=utf-8", text.encode())


# --- Esplora (Blockstream / mempool.space REST API) ----------------------------------------------

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def script_pubkey(address: str) -> tuple[str, str]:
    """The output script (hex) and Esplora's scriptpubkey_type for a mainnet address (no checksum check)."""
    if address.lower().startswith("bc1"):
        data = [_BECH32.index(char) for char in address.lower()[3:-6]]
        version, acc, bits, program = data[0], 0, 0, bytearray()
        for value in data[1:]:
            acc, bits = (acc << 5) | value, bits + 5
            if bits >= 8:
                bits -= 8
                program.append((acc >> bits) & 0xFF)
        kind = {(0, 20): "v0_p2wpkh", (0, 32): "v0_p2wsh", (1, 32): "v1_p2tr"}.get((version, len(program)), "unknown")
        return (bytes([0x50 + version if version else 0, len(program)]) + program).hex(), kind
    number = 0
    for char in address:
        number = number * 58 + _BASE58.index(char)
    raw = b"\x00" * (len(address) - len(address.lstrip("1"))) + number.to_bytes((number.bit_length() + 7) // 8, "big")
    if raw[0] == 0x05:
        return f"a914{raw[1:21].hex()}87", "p2sh"
    return f"76a914{raw[1:21].hex()}88ac", "p2pkh"


def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp())
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


class Esplora:
    """Answers /address/<a>, /address/<a>/txs and /tx/<txid> from a money-flow file (bitcoin.yaml).

    As the real API does, any well-formed address is known: one the flow does not name has no
    transactions. Funding transactions outside the flow count in an address's stats, not in its /txs.
    """

    def __init__(self, prefix: str, flow: Mapping[str, Any]) -> None:
        self.prefix = prefix.rstrip("/")
        self.labels: dict[str, str] = {str(k): str(v) for k, v in (flow.get("addresses") or {}).items()}
        self.txs: dict[str, dict[str, Any]] = {}
        for tx in flow.get("transactions") or []:
            self.txs[str(tx["txid"])] = self._tx(tx)
        # Newest first, as Esplora lists an address's transactions.
        self._ordered = sorted(self.txs.values(), key=lambda tx: -int(tx["status"]["block_height"]))

    @staticmethod
    def _output(address: str, value: int) -> dict[str, Any]:
        script, kind = script_pubkey(address)
        return {"scriptpubkey": script, "scriptpubkey_type": kind, "scriptpubkey_address": address, "value": value}

    def _tx(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        vin: list[dict[str, Any]] = []
        for spent in tx["inputs"]:
            prev_txid, _, prev_vout = str(spent["prev"]).partition(":")
            vin.append({"txid": prev_txid, "vout": int(prev_vout or 0),
                        "prevout": self._output(str(spent["address"]), int(spent["value"])),
                        "scriptsig": "", "is_coinbase": False, "sequence": 4294967293})
        vout = [self._output(str(out["address"]), int(out["value"])) for out in tx["outputs"]]
        fee = sum(v["prevout"]["value"] for v in vin) - sum(o["value"] for o in vout)
        if fee < 0:
            raise WorldError(f"transaction {tx['txid']} spends more than its inputs")
        height = int(tx["block_height"])
        size = 10 + 148 * len(vin) + 34 * len(vout)
        return {"txid": str(tx["txid"]), "version": 2, "locktime": 0, "vin": vin, "vout": vout, "size": size,
                "weight": 4 * size, "fee": fee,
                "status": {"confirmed": True, "block_height": height,
                           "block_hash": hashlib.sha256(f"bev-demo-block:{height}".encode()).hexdigest(),
                           "block_time": _epoch(tx["block_time"])}}

    def _touching(self, address: str) -> list[dict[str, Any]]:
        return [tx for tx in self._ordered
                if any(v["prevout"]["scriptpubkey_address"] == address for v in tx["vin"])
                or any(o["scriptpubkey_address"] == address for o in tx["vout"])]

    def stats(self, address: str) -> dict[str, Any]:
        funded = [o["value"] for tx in self.txs.values() for o in tx["vout"] if o["scriptpubkey_address"] == address]
        spent = [v for tx in self.txs.values() for v in tx["vin"] if v["prevout"]["scriptpubkey_address"] == address]
        outside = [v for v in spent if v["txid"] not in self.txs]  # funded by a transaction outside the flow
        funded += [v["prevout"]["value"] for v in outside]
        tx_count = len(self._touching(address)) + len({v["txid"] for v in outside})
        zero = {"funded_txo_count": 0, "funded_txo_sum": 0, "spent_txo_count": 0, "spent_txo_sum": 0, "tx_count": 0}
        return {"address": address,
                "chain_stats": {"funded_txo_count": len(funded), "funded_txo_sum": sum(funded),
                                "spent_txo_count": len(spent), "spent_txo_sum": sum(v["prevout"]["value"] for v in spent),
                                "tx_count": tx_count},
                "mempool_stats": zero}

    def answer(self, path: str) -> Answer | None:
        if not path.startswith(self.prefix + "/"):
            return None
        parts = path[len(self.prefix) + 1:].split("/")
        if parts[0] == "tx" and len(parts) == 2:
            tx = self.txs.get(parts[1])
            return Answer.json(tx) if tx else Answer.text("Transaction not found", 404)
        if parts[0] != "address" or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "txs"):
            return Answer.text("Not found", 404)
        address = parts[1]
        if not (address.isalnum() and 25 <= len(address) <= 90):
            return Answer.text("Invalid Bitcoin address", 400)
        return Answer.json(self._touching(address) if len(parts) == 3 else self.stats(address))


# --- TAXII 2.1 -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaxiiCollection:
    id: str
    title: str
    description: str
    objects: tuple[dict[str, Any], ...]
    page_size: int

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "description": self.description, "can_read": True,
                "can_write": False, "media_types": ["application/stix+json;version=2.1"]}


@dataclass(frozen=True)
class TaxiiServer:
    """Discovery (/taxii2/), one API root, its collections, and their objects paged with `next`."""

    title: str
    api_root: str
    collections: tuple[TaxiiCollection, ...]

    def answer(self, path: str, query: str, origin: str) -> Answer | None:
        root = self.api_root
        if path == "/taxii2/":
            return Answer.json({"title": self.title, "default": f"{origin}{root}", "api_roots": [f"{origin}{root}"]},
                               content_type=TAXII_TYPE)
        if path == root:
            return Answer.json({"title": self.title, "versions": [TAXII_TYPE], "max_content_length": 10 * 1024 * 1024},
                               content_type=TAXII_TYPE)
        if path == f"{root}collections/":
            return Answer.json({"collections": [c.info() for c in self.collections]}, content_type=TAXII_TYPE)
        for collection in self.collections:
            base = f"{root}collections/{collection.id}/"
            if path == base:
                return Answer.json(collection.info(), content_type=TAXII_TYPE)
            if path == f"{base}objects/":
                return self._page(collection, query)
        return None

    @staticmethod
    def _page(collection: TaxiiCollection, query: str) -> Answer:
        token = parse_qs(query).get("next", ["0"])[0]
        if not token.isdigit() or int(token) > len(collection.objects):
            return Answer.json({"title": "Invalid next", "http_status": "400"}, 400, TAXII_TYPE)
        start, end = int(token), int(token) + collection.page_size
        envelope: dict[str, Any] = {"more": end < len(collection.objects), "objects": list(collection.objects[start:end])}
        if envelope["more"]:
            envelope["next"] = str(end)
        return Answer.json(envelope, content_type=TAXII_TYPE)


def ethereum_rpc(body: bytes) -> Answer:
    """An Ethereum JSON-RPC endpoint on which every address is empty: no balance, no nonce, no code."""
    results = {"eth_getBalance": "0x0", "eth_getTransactionCount": "0x0", "eth_getCode": "0x", "eth_chainId": "0x1",
               "eth_blockNumber": "0x1600000"}
    try:
        call = json.loads(body)
        method, call_id = str(call["method"]), call.get("id")
    except (ValueError, KeyError, TypeError):
        return Answer.json({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
    if method not in results:
        return Answer.json({"jsonrpc": "2.0", "id": call_id, "error": {"code": -32601, "message": "Method not found"}})
    return Answer.json({"jsonrpc": "2.0", "id": call_id, "result": results[method]})


# --- the world -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """One web host: its robots.txt, static routes, and the APIs it serves."""

    name: str
    robots: str | None
    routes: Mapping[str, Answer]
    taxii: TaxiiServer | None = None
    esplora: Esplora | None = None
    ethereum_rpc: str | None = None  # the path JSON-RPC is POSTed to

    def answer(self, method: str, path: str, query: str, body: bytes, origin: str) -> Answer:
        if method == "POST":
            if self.ethereum_rpc is not None and path == self.ethereum_rpc:
                return ethereum_rpc(body)
            return Answer.text("Method not allowed", 405)
        if path == "/robots.txt" and self.robots is not None:
            return Answer(200, "text/plain; charset=utf-8", self.robots.encode())
        found = self.routes.get(path)
        if found is None and self.esplora is not None:
            found = self.esplora.answer(path)
        if found is None and self.taxii is not None:
            found = self.taxii.answer(path, query, origin)
        return found or Answer.text("Not found", 404)


@dataclass(frozen=True)
class World:
    root: Path
    name: str
    title: str
    story: str
    target: tuple[str, str]  # (STIX type, value); values may hold "{port}"
    seeds: tuple[tuple[str, str], ...]
    block: ipaddress.IPv4Network
    dns_address: str
    whois_address: str
    zone: Mapping[tuple[str, str], tuple[str, ...]]  # (name without the final dot, TYPE) -> values
    sites: Mapping[str, Site]
    whois: Mapping[str, str]  # query -> answer
    sources: Mapping[str, Any]

    @classmethod
    def load(cls, root: Path = WORLD_DIR) -> World:
        spec = _yaml(root / "world.yaml")
        zone: dict[tuple[str, str], tuple[str, ...]] = {}
        for name, records in (spec.get("zone") or {}).items():
            for kind, values in records.items():
                if kind.upper() not in _RECORD_TYPES:
                    raise WorldError(f"zone {name}: unsupported record type {kind}")
                zone[(_name(name), kind.upper())] = tuple(_record(kind.upper(), str(v)) for v in values)
        network = spec["network"]
        world = cls(
            root=root, name=str(spec["name"]), title=str(spec["title"]), story=str(spec["story"]).strip(),
            target=(str(spec["target"]["type"]), str(spec["target"]["value"])),
            seeds=tuple((str(s["type"]), str(s["value"])) for s in spec.get("seeds") or []),
            block=ipaddress.IPv4Network(network["block"]), dns_address=str(network["dns"]),
            whois_address=str(network["whois"]), zone=zone,
            sites={_name(name): _site(root, _name(name), site) for name, site in (spec.get("sites") or {}).items()},
            whois={_name(q): (root / path).read_text(encoding="utf-8") for q, path in (spec.get("whois") or {}).items()},
            sources=spec.get("sources") or {},
        )
        world._check()
        return world

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.zone)

    def resolve(self, name: str, kind: str = "A") -> tuple[str, ...]:
        """Addresses (or other records) of `name`, following CNAMEs as a resolver does."""
        current = _name(name)
        for _ in range(8):
            if (current, kind) in self.zone:
                return self.zone[(current, kind)]
            alias = self.zone.get((current, "CNAME"))
            if not alias:
                return ()
            current = alias[0].rstrip(".")
        raise WorldError(f"CNAME loop at {name}")

    def site_address(self, name: str) -> str:
        return self.resolve(name)[0]

    def _check(self) -> None:
        for server in (self.dns_address, self.whois_address):
            if ipaddress.IPv4Address(server) not in self.block:
                raise WorldError(f"{server} is outside the world's block {self.block}")
        for name in self.sites:
            addresses = self.resolve(name)
            if len(addresses) != 1 or ipaddress.IPv4Address(addresses[0]) not in self.block:
                raise WorldError(f"web host {name} must resolve to one address in {self.block}, not {addresses}")
        for query in self.whois:
            if query not in self.names:
                raise WorldError(f"WHOIS record for {query}, which is not in the zone")
        for (name, kind), values in self.zone.items():
            if not name.endswith((".example.com", ".example.net", ".example.org")):
                raise WorldError(f"zone name {name} is not under example.com/.net/.org (RFC 2606)")
            for value in values if kind in ("A", "AAAA") else ():
                address = ipaddress.ip_address(value)
                if address.is_global or not (address in self.block or _documentation(address)):
                    raise WorldError(f"{name} {kind} {value}: neither the world's block nor a documentation range")


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise WorldError(f"{path}: expected a mapping")
    return data


def _name(name: str) -> str:
    return str(name).strip().rstrip(".").lower()


def _record(kind: str, value: str) -> str:
    if kind == "TXT" and not value.startswith('"'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind in ("MX", "NS", "CNAME") and not value.endswith("."):
        return value + "."
    return value


_DOCUMENTATION = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                          "2001:db8::/32"))


def _documentation(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address.version == net.version and address in net for net in _DOCUMENTATION)


def _site(root: Path, name: str, spec: Mapping[str, Any]) -> Site:
    routes: dict[str, Answer] = {}
    for path, route in (spec.get("routes") or {}).items():
        file, content_type = (route["file"], route.get("type")) if isinstance(route, dict) else (route, None)
        file_path = root / str(file)
        routes[str(path)] = Answer(200, str(content_type or _SUFFIX_TYPES.get(file_path.suffix, "application/octet-stream")),
                                   file_path.read_bytes())
    taxii = None
    if "taxii" in spec:
        collections = tuple(
            TaxiiCollection(str(c["id"]), str(c["title"]), str(c.get("description", "")),
                            tuple(json.loads((root / c["bundle"]).read_text(encoding="utf-8"))["objects"]),
                            int(c.get("page_size", 100)))
            for c in spec["taxii"]["collections"])
        taxii = TaxiiServer(str(spec["taxii"]["title"]), str(spec["taxii"]["api_root"]), collections)
    esplora = None
    if "esplora" in spec:
        esplora = Esplora(str(spec["esplora"]["prefix"]), _yaml(root / spec["esplora"]["flow"]))
    rpc = spec.get("ethereum_rpc")
    return Site(name, spec.get("robots"), routes, taxii, esplora, str(rpc) if rpc is not None else None)


# --- ground truth --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recall:
    entities: float
    relations: float
    missing_entities: frozenset[tuple[str, str]]
    missing_relations: frozenset[tuple[str, str, str]]


@dataclass(frozen=True)
class GroundTruth:
    """What an investigation of the world's target should find, in the collectors' vocabulary:
    entities as (STIX type, value), relations as (source value, relation type, target value)."""

    target: tuple[str, str]
    entities: frozenset[tuple[str, str]]
    relations: frozenset[tuple[str, str, str]]
    never_contacted: tuple[str, ...]  # hosts and addresses an investigation must not connect to
    never_requested: tuple[str, ...]  # URL prefixes it must not request (robots.txt disallows them)
    planted: tuple[str, ...]  # text planted to steer an automated reader (prompt injections)

    @classmethod
    def load(cls, path: Path, port: int) -> GroundTruth:
        spec = localize(_yaml(path), port)
        entities = frozenset((str(e["type"]), str(e["value"])) for e in spec["entities"])
        relations = frozenset((str(r["source"]), str(r["type"]), str(r["target"])) for r in spec["relations"])
        values = {value for _, value in entities}
        dangling = sorted({end for source, _, target in relations for end in (source, target)} - values)
        if dangling:
            raise WorldError(f"{path}: relations name values that are not entities: {dangling}")
        target = (str(spec["target"]["type"]), str(spec["target"]["value"]))
        return cls(target, entities, relations, *(tuple(str(item) for item in spec.get(key) or [])
                                                  for key in ("never_contacted", "never_requested", "planted")))

    def recall(self, entities: Iterable[tuple[str, str]], relations: Iterable[tuple[str, str, str]]) -> Recall:
        missing_entities = self.entities - set(entities)
        missing_relations = self.relations - set(relations)
        return Recall(1 - len(missing_entities) / len(self.entities), 1 - len(missing_relations) / len(self.relations),
                      frozenset(missing_entities), frozenset(missing_relations))
