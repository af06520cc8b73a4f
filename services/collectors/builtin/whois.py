"""WHOIS (RFC 3912): ask the configured server, follow one IANA-style `refer:` referral.

A raw client rather than python-whois: python-whois shells out to the system `whois` binary or
guesses servers from a built-in table, while here the server and port are configuration.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from services.collectors.contract import CollectContext, CollectorError, Finding, InvalidTarget
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable, Relation, from_indicator
from services.collectors.settings import CollectorsConfig

_REFERRAL = re.compile(r"^\s*refer\s*:\s*(\S+)\s*$", re.I | re.M)  # IANA-style referral
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_FIELDS = {
    "registrar": re.compile(r"^\s*Registrar\s*:\s*(.+?)\s*$", re.I | re.M),
    "created": re.compile(r"^\s*(?:Creation Date|created)\s*:\s*(.+?)\s*$", re.I | re.M),
    "expires": re.compile(r"^\s*(?:Registry Expiry Date|Expiration Date|expires)\s*:\s*(.+?)\s*$", re.I | re.M),
}
_NAME_SERVER = re.compile(r"^\s*(?:Name Server|nserver)\s*:\s*(\S+)", re.I | re.M)


class WhoisCollector:
    name = "whois"
    description = "Queries WHOIS (RFC 3912) for a domain: registrar, dates, name servers, contact emails"
    consumes = frozenset({"domain-name"})
    produces = frozenset({"domain-name", "email-addr"})
    rate_limit_per_s = 1.0  # WHOIS servers throttle hard
    default_confidence = 80
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config.whois

    async def _query(self, server: str, query: str) -> str:
        host, _, port = server.rpartition(":") if ":" in server else (server, "", "43")
        try:
            async with asyncio.timeout(self.config.timeout_s):
                reader, writer = await asyncio.open_connection(host, int(port))
                try:
                    writer.write(query.encode("idna") + b"\r\n")
                    await writer.drain()
                    data = await reader.read(self.config.max_bytes + 1)
                    while data and len(data) <= self.config.max_bytes:
                        more = await reader.read(self.config.max_bytes + 1 - len(data))
                        if not more:
                            break
                        data += more
                finally:
                    writer.close()
        except TimeoutError:
            raise CollectorError(f"WHOIS {server}: no answer within {self.config.timeout_s:g}s") from None
        except OSError as exc:
            raise CollectorError(f"WHOIS {server}: cannot connect ({exc.strerror or exc})") from None
        if len(data) > self.config.max_bytes:
            raise CollectorError(f"WHOIS {server}: answer exceeds {self.config.max_bytes} bytes")
        return data.decode("utf-8", "replace")

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        if ctx.opsec:
            raise CollectorError("investigation is OPSEC-marked: a WHOIS query would be a direct connection")
        domain = target.value.lower().rstrip(".")
        if not _DOMAIN.match(domain):
            raise InvalidTarget(f"{target.value!r} is not a domain name")
        server = self.config.server
        text = await self._query(server, domain)
        referral = _REFERRAL.search(text)
        if referral and referral.group(1).lower() not in server.lower():
            port = server.rpartition(":")[2] if ":" in server else "43"
            server = f"{referral.group(1)}:{port}" if ":" not in referral.group(1) else referral.group(1)
            text = await self._query(server, domain)
        source = f"whois://{server}/{domain}"
        props = {key: m.group(1) for key, pattern in _FIELDS.items() if (m := pattern.search(text))}
        subject = Observable("domain-name", domain, props)
        yield Finding(subject, source)
        for ns in dict.fromkeys(m.group(1).lower().rstrip(".") for m in _NAME_SERVER.finditer(text)):
            other = Observable("domain-name", ns)
            yield Finding(other, source, (Relation(subject, other, "name-server", 80),))
        for indicator in extract_indicators(text):
            if indicator.type == "email":
                email = from_indicator("email", indicator.value)
                yield Finding(email, source, (Relation(subject, email, "registrant-contact", 60),))
