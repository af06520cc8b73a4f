"""Bitcoin addresses through an Esplora-compatible REST API (Blockstream's, mempool.space's, your own).

From the target address, transactions are walked breadth-first up to `max_depth` hops, following at
most `max_fanout` counterparties per address and visiting at most `max_addresses` addresses.
Relations: `sent-to` from each input address to each output address of a transaction, and
`same-owner` between addresses spent together in one transaction (the common-input-ownership
heuristic), pointing at the cluster's smallest address so a cluster is a star, not a clique.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from bev.wallets import is_valid_bitcoin_address
from services.collectors.contract import CollectContext, CollectorError, Finding, InvalidTarget
from services.collectors.observables import Observable, Relation
from services.collectors.settings import CollectorsConfig


def _btc(address: str, **props: Any) -> Observable:
    return Observable("x-crypto-address", address, {"currency": "BTC", **props})


class BitcoinCollector:
    name = "bitcoin"
    description = "Traces a Bitcoin address's transactions and counterparties (Esplora API), clusters co-spent inputs"
    consumes = frozenset({"x-crypto-address"})
    produces = frozenset({"x-crypto-address"})
    default_confidence = 90
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config.bitcoin
        self.rate_limit_per_s = config.bitcoin.rate_limit_per_s

    async def _get(self, path: str, ctx: CollectContext) -> Any:
        url = f"{self.config.esplora_url.rstrip('/')}{path}"
        try:
            result = await ctx.fetcher.get(url, investigation_id=ctx.investigation_id, opsec=ctx.opsec,
                                           accept=["application/json"], api=True)
            return json.loads(result.body)
        except ValueError as exc:
            raise CollectorError(f"Esplora {url}: not JSON ({exc})") from None

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        if not is_valid_bitcoin_address(target.value):
            raise InvalidTarget(f"{target.value!r} is not a valid Bitcoin address (checksum)")
        source = self.config.esplora_url
        queue: deque[tuple[str, int]] = deque([(target.value, 0)])
        visited: set[str] = set()
        while queue and len(visited) < self.config.max_addresses:
            address, depth = queue.popleft()
            if address in visited:
                continue
            visited.add(address)
            info = await self._get(f"/address/{address}", ctx)
            stats = info.get("chain_stats", {})
            node = _btc(address, tx_count=int(stats.get("tx_count", 0)),
                        received_sat=int(stats.get("funded_txo_sum", 0)), spent_sat=int(stats.get("spent_txo_sum", 0)))
            yield Finding(node, f"{source}/address/{address}")
            if depth >= self.config.max_depth:
                continue
            counterparties: list[str] = []
            for tx in await self._get(f"/address/{address}/txs", ctx):
                txid = str(tx.get("txid", ""))
                inputs = sorted({str(vin["prevout"]["scriptpubkey_address"]) for vin in tx.get("vin", [])
                                 if (vin.get("prevout") or {}).get("scriptpubkey_address")})
                outputs = sorted({str(out["scriptpubkey_address"]) for out in tx.get("vout", [])
                                  if out.get("scriptpubkey_address")})
                evidence = f"{source}/tx/{txid}"
                relations: list[Relation] = []
                if address in inputs:
                    relations += [Relation(_btc(address), _btc(out), "sent-to", 90) for out in outputs
                                  if out not in inputs]
                    owner = inputs[0]
                    relations += [Relation(_btc(other), _btc(owner), "same-owner", 70) for other in inputs
                                  if other != owner]
                    counterparties += [out for out in outputs if out not in inputs]
                elif address in outputs:
                    relations += [Relation(_btc(src), _btc(address), "sent-to", 90) for src in inputs]
                    counterparties += inputs
                for relation in relations:
                    yield Finding(relation.source, evidence, (relation,))
            for other in list(dict.fromkeys(counterparties))[: self.config.max_fanout]:
                if other not in visited:
                    queue.append((other, depth + 1))
