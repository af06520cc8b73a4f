"""Ethereum addresses over JSON-RPC: balance, transaction count (nonce) and whether it is a contract.

Counterparties need an indexer (Ethereum nodes do not index transactions by address), so they are
not collected here; an explorer-API collector would add them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from services.collectors.contract import CollectContext, CollectorError, Finding, InvalidTarget
from services.collectors.observables import Observable
from services.collectors.settings import CollectorsConfig

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class EthereumCollector:
    name = "ethereum"
    description = "Reads an Ethereum address's balance, nonce and contract code over JSON-RPC"
    consumes = frozenset({"x-crypto-address"})
    produces = frozenset({"x-crypto-address"})
    default_confidence = 95
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config.ethereum
        self.rate_limit_per_s = config.ethereum.rate_limit_per_s

    async def _call(self, method: str, params: list[Any], ctx: CollectContext, call_id: int) -> str:
        payload = {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}
        answer = await ctx.fetcher.post_json(self.config.rpc_url, payload, investigation_id=ctx.investigation_id,
                                             opsec=ctx.opsec)
        if not isinstance(answer, dict) or "error" in answer or "result" not in answer:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise CollectorError(f"Ethereum JSON-RPC {method}: {error}")
        return str(answer["result"])

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        if not _ADDRESS.fullmatch(target.value):
            raise InvalidTarget(f"{target.value!r} is not an Ethereum address (0x + 40 hex digits)")
        address = target.value.lower()
        balance = int(await self._call("eth_getBalance", [address, "latest"], ctx, 1), 16)
        nonce = int(await self._call("eth_getTransactionCount", [address, "latest"], ctx, 2), 16)
        code = await self._call("eth_getCode", [address, "latest"], ctx, 3)
        yield Finding(Observable("x-crypto-address", address, {
            "currency": "ETH", "balance_wei": str(balance), "nonce": nonce, "is_contract": code not in ("0x", "0x0"),
        }), self.config.rpc_url)
