"""DNS: a domain's A, AAAA, MX, NS, TXT and CNAME records, over dnspython to configured resolvers."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from services.collectors.contract import CollectContext, CollectorError, Finding, InvalidTarget
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable, Relation, from_indicator
from services.collectors.settings import CollectorsConfig


class DnsCollector:
    name = "dns"
    description = "Resolves a domain's A/AAAA/MX/NS/TXT/CNAME records through the configured resolvers"
    consumes = frozenset({"domain-name"})
    produces = frozenset({"domain-name", "ipv4-addr", "ipv6-addr", "url", "email-addr"})
    rate_limit_per_s = 20.0
    default_confidence = 90  # what an authoritative answer says, as of now
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config.dns
        self.resolver = dns.asyncresolver.Resolver(configure=False)
        addresses, ports = [], set()
        for server in config.dns.nameservers:
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "53")
            addresses.append(host)
            ports.add(int(port))
        if len(ports) > 1:
            raise ValueError("all DNS nameservers must use one port")
        self.resolver.nameservers = addresses
        self.resolver.port = ports.pop() if ports else 53
        self.resolver.lifetime = config.dns.timeout_s

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        if ctx.opsec:
            raise CollectorError("investigation is OPSEC-marked: a DNS query would be a direct connection")
        try:
            domain = dns.name.from_text(target.value)
        except dns.exception.DNSException as exc:
            raise InvalidTarget(f"{target.value!r} is not a domain name: {exc}") from None
        source = f"dns://{self.resolver.nameservers[0]}:{self.resolver.port}"
        yield Finding(target, source)
        for record_type in self.config.record_types:
            try:
                answer = await self.resolver.resolve(domain, record_type, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                return
            except dns.resolver.NoNameservers as exc:
                raise CollectorError(f"{target.value} {record_type}: every resolver failed ({exc})") from None
            except dns.exception.Timeout:
                raise CollectorError(f"{target.value} {record_type}: no answer from {source} "
                                     f"within {self.config.timeout_s:g}s") from None
            for record in answer:
                for finding in self._findings(target, record_type, record, source):
                    yield finding

    @staticmethod
    def _findings(target: Observable, record_type: str, record: object, source: str) -> list[Finding]:
        match record_type:
            case "A" | "AAAA":
                address = ipaddress.ip_address(str(record))
                kind = "ipv4-addr" if address.version == 4 else "ipv6-addr"
                ip = Observable(kind, str(address))
                return [Finding(ip, source, (Relation(target, ip, "resolves-to", 90),))]
            case "MX" | "NS" | "CNAME":
                name = getattr(record, "exchange", None) if record_type == "MX" else getattr(record, "target", None)
                host = str(name or "").rstrip(".").lower()
                if not host:
                    return []
                other = Observable("domain-name", host)
                relation = {"MX": "mail-server", "NS": "name-server", "CNAME": "resolves-to"}[record_type]
                return [Finding(other, source, (Relation(target, other, relation, 90),))]
            case "TXT":
                text = b"".join(getattr(record, "strings", [])).decode("utf-8", "replace")
                found = []
                for indicator in extract_indicators(text):
                    if indicator.type in ("domain", "url", "email", "ipv4", "ipv6"):
                        other = from_indicator(indicator.type, indicator.value)
                        if other.id != target.id:
                            found.append(Finding(other, source, (Relation(target, other, "related-to", 60),)))
                return found
        return []
