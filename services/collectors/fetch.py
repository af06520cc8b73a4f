"""Every HTTP request a collector makes: the SSRF guard, limits, robots.txt, rate limits, Tor.

Direct (clearnet) requests: parse the URL, resolve the host ourselves, refuse if ANY address is
not public (private, loopback, link-local and so cloud metadata, CGNAT 100.64.0.0/10, multicast,
reserved, and IPv6 forms that embed such an IPv4: mapped, compatible, 6to4, Teredo, NAT64),
then connect to the address we checked (Host header and TLS SNI keep the name), so a second DNS
answer cannot differ from the one checked (DNS rebinding). Every redirect is checked again.
Numeric host spellings (2130706433, 0x7f.1, 0177.0.0.1, 127.1) are read the way inet_aton reads
them, which is how the C library would have connected.

Through Tor (.onion always; everything when the investigation is marked OPSEC): the host is
resolved by Tor, never here (a local lookup would leak the target); literal addresses are still
checked. Each investigation gets its own SOCKS credentials, which Tor's IsolateSOCKSAuth (on by
default) turns into separate circuits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
import urllib.robotparser
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx
from httpx_socks import AsyncProxyTransport
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

from services.collectors.errors import CollectorError, TargetRefused
from services.collectors.ratelimit import SlotLimiter
from services.collectors.settings import FetchConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused even when Python's ipaddress calls them global.
_ALWAYS_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr) for cidr in (
        "0.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4",
        "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_BLOCKED_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata",
                  "metadata.google.internal", "instance-data")
_BLOCKED_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


# A collector lets these through as they are: a refusal is its TargetRefused, a failure its
# CollectorError, and their one-line messages already name the URL.
class FetchRefused(TargetRefused):
    """The request was not made (or not finished) by policy; str() says which rule."""


class FetchFailed(CollectorError):
    """The other side failed (unreachable, timeout, bad status); str() is one line. `status` is the
    HTTP status when the failure is one (0 otherwise): API collectors tell "no such account" apart."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CheckedTarget:
    url: httpx.URL
    host: str
    addresses: tuple[IPAddress, ...]  # empty when Tor resolves the host


@dataclass(frozen=True)
class FetchResult:
    url: str  # the final URL, after redirects
    status: int
    content_type: str
    body: bytes
    via_tor: bool


def _canonical_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:  # not a canonical literal; the caller tries the C library's spellings
        return None


def parse_numeric_host(host: str) -> IPAddress | None:
    """A literal address in any spelling the C library accepts, or None for a name."""
    bare = host.strip("[]")
    canonical = _canonical_address(bare.split("%")[0])
    if canonical is not None:
        return canonical
    if all(part and (part.isdigit() or part.lower().startswith("0x")) for part in bare.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(address))
    return None


class AddressPolicy:
    """Which addresses a collector may connect to: public ones, plus configured ranges."""

    def __init__(self, allow_ranges: Sequence[str] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow_ranges)

    def refusal(self, address: IPAddress) -> str | None:
        """None when allowed, else why not."""
        if any(address.version == net.version and address in net for net in self.allowed):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                reason = self.refusal(inner)
                return f"{address} embeds {inner}: {reason}" if reason else None
        for net in _ALWAYS_BLOCKED:
            if address.version == net.version and address in net:
                return f"{address} is in blocked range {net}"
        if not address.is_global:
            return f"{address} is not a public address"
        return None


class Fetcher:
    """Guarded HTTP GET for collectors (see the module doc)."""

    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.policy = AddressPolicy(config.allow_ranges)
        self._timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        self._direct = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(retries=0), timeout=self._timeout, trust_env=False,
            follow_redirects=False)
        self._tor_clients: dict[str, httpx.AsyncClient] = {}
        self._resolver = self._make_resolver(config.nameservers)
        self._robots: dict[str, tuple[float, urllib.robotparser.RobotFileParser | None]] = {}
        self._per_domain = SlotLimiter(config.per_domain_rate_per_s)

    @staticmethod
    def _make_resolver(nameservers: Sequence[str]) -> dns.asyncresolver.Resolver | None:
        if not nameservers:
            return None
        resolver = dns.asyncresolver.Resolver(configure=False)
        hosts = [server.rsplit(":", 1) if server.count(":") == 1 else [server] for server in nameservers]
        resolver.nameservers = [parts[0] for parts in hosts]
        resolver.port = int(hosts[0][1]) if len(hosts[0]) == 2 else 53
        resolver.lifetime = 5.0
        return resolver

    async def close(self) -> None:
        await self._direct.aclose()
        for client in self._tor_clients.values():
            await client.aclose()

    # --- the guard -----------------------------------------------------------------------------

    async def check(self, url: str, *, via_tor: bool = False) -> CheckedTarget:
        """Refuse (FetchRefused) or return where to connect. Makes DNS queries only when direct."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise FetchRefused(f"not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise FetchRefused(f"scheme {parsed.scheme or '(none)'!r} is not fetched; only http and https")
        host = parsed.host.rstrip(".").lower()
        if not host:
            raise FetchRefused("URL has no host")
        if parsed.userinfo:
            raise FetchRefused("URLs with credentials (user@host) are not fetched")
        literal = parse_numeric_host(host)
        if literal is not None:
            self._refuse_address(literal, host)
            return CheckedTarget(parsed, host, (literal,))
        if host in _BLOCKED_NAMES or host.endswith(_BLOCKED_SUFFIXES):
            raise FetchRefused(f"host {host!r} names a local or internal machine")
        if host.endswith(".onion"):
            if not via_tor:
                raise FetchRefused(f"{host} is a Tor hidden service; .onion is fetched only through Tor")
            return CheckedTarget(parsed, host, ())
        if via_tor:
            return CheckedTarget(parsed, host, ())  # Tor resolves it; a local lookup would leak it
        addresses = await self._resolve(host)
        for address in addresses:
            self._refuse_address(address, host)
        return CheckedTarget(parsed, host, addresses)

    def _refuse_address(self, address: IPAddress, host: str) -> None:
        reason = self.policy.refusal(address)
        if reason is not None:
            raise FetchRefused(f"{host}: {reason}")

    async def _resolve(self, host: str) -> tuple[IPAddress, ...]:
        found: list[IPAddress] = []
        if self._resolver is None:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise FetchFailed(f"cannot resolve {host}: {exc.strerror}") from None
            found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        else:
            for record_type in ("A", "AAAA"):
                try:
                    answer = await self._resolver.resolve(host, record_type)
                except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                    continue
                except dns.exception.DNSException as exc:
                    raise FetchFailed(f"cannot resolve {host}: {exc}") from None
                found.extend(ipaddress.ip_address(record.address) for record in answer)
        if not found:
            raise FetchFailed(f"cannot resolve {host}: no A or AAAA records")
        return tuple(dict.fromkeys(found))

    # --- fetching ------------------------------------------------------------------------------

    def _tor_client(self, investigation_id: str) -> httpx.AsyncClient:
        if not self.config.tor_socks_url:
            raise FetchRefused("this request must go through Tor, and no Tor proxy is configured "
                               "(BEV_COLLECTORS__FETCH__TOR_SOCKS_URL)")
        client = self._tor_clients.get(investigation_id)
        if client is None:
            # Distinct SOCKS credentials per investigation -> distinct Tor circuits (IsolateSOCKSAuth).
            proxy = httpx.URL(self.config.tor_socks_url)
            user = quote(f"bev-{investigation_id or 'default'}", safe="")
            url = f"socks5://{user}:isolate@{proxy.host}:{proxy.port or 9050}"
            transport = AsyncProxyTransport.from_url(url, rdns=True, retries=0)
            client = httpx.AsyncClient(transport=transport, timeout=self._timeout, trust_env=False,
                                       follow_redirects=False)
            self._tor_clients[investigation_id] = client
        return client

    async def get(self, url: str, *, investigation_id: str = "", opsec: bool = False,
                  accept: Sequence[str] | None = None, headers: dict[str, str] | None = None,
                  api: bool = False) -> FetchResult:
        """GET with every rule applied; raises FetchRefused or FetchFailed with one line.

        `api=True` for machine APIs (Esplora, TAXII): robots.txt governs crawlers, not API clients.
        """
        try:
            async with asyncio.timeout(self.config.total_timeout_s):
                return await self._get(url, investigation_id, opsec, accept, headers or {}, robots=not api)
        except TimeoutError:
            raise FetchFailed(f"{url}: no complete answer within {self.config.total_timeout_s:g}s") from None

    async def post_json(self, url: str, payload: Any, *, investigation_id: str = "", opsec: bool = False) -> Any:
        """POST a JSON body (JSON-RPC APIs) under the same guard; returns the decoded JSON answer."""
        try:
            async with asyncio.timeout(self.config.total_timeout_s):
                target = await self.check(url, via_tor=self._use_tor(url, opsec))
                result = await self._request("POST", target, investigation_id, opsec, ["application/json"],
                                             {"content-type": "application/json"}, httpx_json=payload)
        except TimeoutError:
            raise FetchFailed(f"{url}: no complete answer within {self.config.total_timeout_s:g}s") from None
        if result.status >= 400:
            raise FetchFailed(f"{url}: HTTP {result.status}", result.status)
        try:
            return json.loads(result.body)
        except ValueError as exc:
            raise FetchFailed(f"{url}: answer is not JSON ({exc})") from None

    def _use_tor(self, url: str, opsec: bool) -> bool:
        try:
            host = httpx.URL(url).host.lower().rstrip(".")
        except (httpx.InvalidURL, ValueError, TypeError):
            return opsec
        return opsec or host.endswith(".onion")

    async def _get(self, url: str, investigation_id: str, opsec: bool, accept: Sequence[str] | None,
                   headers: dict[str, str], robots: bool) -> FetchResult:
        current = url
        for _ in range(self.config.max_redirects + 1):
            via_tor = self._use_tor(current, opsec)
            target = await self.check(current, via_tor=via_tor)
            if robots and self.config.respect_robots and not target.host.endswith(".onion"):
                await self._check_robots(target, investigation_id, opsec)
            result = await self._request("GET", target, investigation_id, opsec, accept, headers)
            if result.status in (301, 302, 303, 307, 308):
                location = result.content_type  # _request puts the Location there for redirects
                current = str(target.url.join(location))
                continue
            if result.status >= 400:
                raise FetchFailed(f"{current}: HTTP {result.status}", result.status)
            return result
        raise FetchRefused(f"{url}: more than {self.config.max_redirects} redirects")

    async def _request(self, method: str, target: CheckedTarget, investigation_id: str, opsec: bool,
                       accept: Sequence[str] | None, headers: dict[str, str], httpx_json: Any = None) -> FetchResult:
        via_tor = not target.addresses or self._use_tor(str(target.url), opsec)
        await self._per_domain.wait(target.host)  # per-domain politeness: wait, never fail
        allowed_types = [t.lower() for t in (accept or self.config.content_types)]
        request_headers = {"user-agent": self.config.user_agent, "accept": ", ".join(allowed_types), **headers}
        extensions: dict[str, Any] = {}
        if via_tor:
            client = self._tor_client(investigation_id)
            request_url = target.url
        else:
            client = self._direct
            address = target.addresses[0]
            request_url = target.url.copy_with(host=str(address))
            request_headers["host"] = target.url.netloc.decode("ascii")
            if target.url.scheme == "https":
                extensions["sni_hostname"] = target.host  # certificate checked against the name
        try:
            async with client.stream(method, request_url, headers=request_headers, extensions=extensions,
                                     json=httpx_json) as response:
                if response.status_code in (301, 302, 303, 307, 308):
                    location = response.headers.get("location", "")
                    if not location:
                        raise FetchFailed(f"{target.url}: redirect without a Location")
                    return FetchResult(str(target.url), response.status_code, location, b"", via_tor)
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if response.status_code < 400 and content_type not in allowed_types:
                    raise FetchRefused(f"{target.url}: Content-Type {content_type or '(none)'} is not accepted")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.config.max_bytes:
                    raise FetchRefused(f"{target.url}: {declared} bytes exceeds the {self.config.max_bytes}-byte limit")
                body = bytearray()
                async for chunk in response.aiter_bytes():  # decoded bytes: a gzip bomb hits the limit too
                    body.extend(chunk)
                    if len(body) > self.config.max_bytes:
                        raise FetchRefused(f"{target.url}: body exceeds the {self.config.max_bytes}-byte limit")
                return FetchResult(str(target.url), response.status_code, content_type, bytes(body), via_tor)
        except httpx.TimeoutException:
            raise FetchFailed(f"{target.url}: timed out") from None
        except httpx.HTTPError as exc:
            route = "through Tor" if via_tor else "directly"
            raise FetchFailed(f"{target.url}: cannot connect {route}: {exc or type(exc).__name__}") from None
        except (ProxyError, ProxyConnectionError, ProxyTimeoutError) as exc:
            raise FetchFailed(f"{target.url}: cannot connect through Tor: {exc}") from None

    async def _check_robots(self, target: CheckedTarget, investigation_id: str, opsec: bool) -> None:
        origin = f"{target.url.scheme}://{target.url.netloc.decode('ascii')}"
        cached = self._robots.get(origin)
        if cached is None or cached[0] < time.monotonic():
            parser: urllib.robotparser.RobotFileParser | None = None
            try:
                result = await self._get(f"{origin}/robots.txt", investigation_id, opsec, ["text/plain"], {},
                                         robots=False)
                parser = urllib.robotparser.RobotFileParser()
                parser.parse(result.body.decode("utf-8", "replace").splitlines())
            except (FetchFailed, FetchRefused):
                parser = None  # no readable robots.txt: nothing is disallowed (RFC 9309 2.3.1.3)
            cached = (time.monotonic() + 3600, parser)
            self._robots[origin] = cached
        parser = cached[1]
        if parser is not None and not parser.can_fetch(self.config.user_agent, str(target.url)):
            raise FetchRefused(f"{target.url}: disallowed by {origin}/robots.txt")

