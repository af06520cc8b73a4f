"""The investigation's scope: the hosts and networks its tool calls may reach, checked before each call.

Agents read untrusted pages, and a page can ask them to fetch anything (a cloud metadata address,
an intranet host, a third party's site). So every ``collectors.Collect`` an agent asks for is
checked here first, against an explicit list: the analyst's ``allow`` entries (a domain covers
the name and its subdomains; a CIDR covers its addresses), or by default the target's registrable
domain (Public Suffix List: ``browser-update.example.com`` -> ``example.com``) or its own /32 or
/128. A wallet, hash or name target gets no network scope at all.

The scope grows only in two narrow ways, both recorded: :meth:`Scope.widen` adds one exact host
that an in-scope page names (never its parent, never an IP literal), and
:meth:`Scope.note_resolution` lets an IP address that an in-scope name resolved to be collected
on (RDAP, passive DNS) without making URLs on it fetchable. The collectors service keeps its own
SSRF guard; this is the swarm's, and it errs toward refusing. It round-trips through JSON
(:meth:`Scope.to_dict`) because the durable workflow persists it and rebuilds it on resume.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bev.stix import account_of
from services.swarm.roles import COLLECT
from services.swarm.targets import Target, normalise_host, public_suffix, registrable_domain

__all__ = ["MAX_ALLOW_ENTRIES", "MAX_RESOLUTIONS", "MAX_WIDENED_HOSTS", "Scope", "ScopeError"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_ALLOW_ENTRIES: Final = 256
MAX_WIDENED_HOSTS: Final = 1000  # a page that names thousands of hosts should not drag them all in
MAX_RESOLUTIONS: Final = 10_000
# An allow CIDR is a bound, not a wildcard: nothing broader than these prefixes.
_MIN_PREFIX: Final = {4: 8, 6: 32}
# Ranges no allow entry may touch: this host, loopback, link-local (cloud metadata lives at
# 169.254.169.254), multicast, reserved, IPv4 inside IPv6 (which would re-open all of the above),
# and the metadata addresses outside those ranges (AWS IPv6, Alibaba).
_FORBIDDEN_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "100.100.100.200/32",
        "::/96", "::ffff:0:0/96", "fe80::/10", "ff00::/8", "fd00:ec2::254/128",
    )
)  # fmt: skip
# Special-use names (RFC 6761, RFC 8375, ICANN's .internal) that no public page can point at usefully.
_SPECIAL_USE_SUFFIXES: Final = ("localhost", "local", "internal", "invalid", "test", "home.arpa", "arpa")
# Of those, the ones not even an analyst's allow entry or target may name (loopback, never resolvable).
_NEVER_SUFFIXES: Final = ("localhost", "invalid")
_SCHEMES: Final = frozenset({"http", "https"})
_IP_TARGET_TYPES: Final = {"ipv4-addr": 4, "ipv6-addr": 6}


class ScopeError(ValueError):
    """An allow entry, or a persisted scope, that cannot be used (malformed, too broad, forbidden)."""


@dataclass
class Scope:
    """Where an investigation's tool calls may go; make one with :meth:`build` or :meth:`from_dict`.

    ``domains``: names allowed with all their subdomains; ``networks``: allowed CIDRs;
    ``hosts``: exact hosts added by :meth:`widen` (host -> why); ``resolutions``: IP addresses seen
    resolving from in-scope names (ip -> name).
    """

    domains: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    hosts: dict[str, str] = field(default_factory=dict)
    resolutions: dict[str, str] = field(default_factory=dict)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def build(cls, target: Target, allow: Sequence[str]) -> Scope:
        """The analyst's ``allow`` entries, or the target's default scope when there are none.

        Raises :class:`ScopeError` for an unusable entry, or when the entries exclude a domain,
        URL or IP target itself (an investigation that may not touch its own target).
        """
        if isinstance(allow, str):
            raise ScopeError("allow is a list of entries, not one string")
        if len(allow) > MAX_ALLOW_ENTRIES:
            raise ScopeError(f"{len(allow)} allow entries; at most {MAX_ALLOW_ENTRIES}")
        if not allow:
            return cls._default(target)
        domains: list[str] = []
        networks: list[IPNetwork] = []
        for entry in allow:
            parsed = _allow_entry(entry)
            if isinstance(parsed, str):
                if parsed not in domains:
                    domains.append(parsed)
            elif parsed not in networks:
                networks.append(parsed)
        scope = cls(tuple(domains), tuple(networks))
        host = target.host
        if target.kind in ("domain", "url", "ipv4", "ipv6") and host is not None and not scope.allows_host(host):
            raise ScopeError(f"the allow list ({scope.describe()}) excludes the target {target.value!r} itself")
        return scope

    @classmethod
    def _default(cls, target: Target) -> Scope:
        host = target.host
        if host is None:  # wallets, hashes, names: no network destination of their own
            return cls()
        address = _ip_literal(host)
        if address is not None:
            return cls(networks=(_checked_network(ipaddress.ip_network(address), f"the target's address {address}"),))
        if _under(host, _NEVER_SUFFIXES):
            raise ScopeError(f"the target's host {host!r} is a special-use name (loopback or never resolvable)")
        domain = registrable_domain(host)
        if domain is None:  # the target is itself a public suffix (co.uk, github.io): that name only
            return cls(hosts={host: "the target (a public suffix: no registrable domain)"})
        return cls(domains=(domain,))

    # --- checks ---------------------------------------------------------------------------------

    def allows_host(self, host: str) -> bool:
        """A name inside an allowed domain (or widened to), or an IP literal inside an allowed CIDR.

        An IP literal is never allowed because a domain is: what a name resolves to is not known
        here, and an attacker's in-scope name can resolve anywhere.
        """
        if not isinstance(host, str):
            return False
        address = _ip_literal(host)
        if address is not None:
            return self._in_networks(address)
        if host.startswith("["):
            return False  # a bracketed literal that is not an IPv6 address (or carries a zone index)
        try:
            name = normalise_host(host)
        except ValueError:
            return False
        return name in self.hosts or any(name == domain or name.endswith("." + domain) for domain in self.domains)

    def allows_address(self, ip: str) -> bool:
        """An IP address inside an allowed CIDR, or one an in-scope name was seen resolving to."""
        address = _ip_literal(ip)
        if address is None:
            return False
        return self._in_networks(address) or any(str(form) in self.resolutions for form in _forms(address))

    def allows_url(self, url: str) -> bool:
        """An http(s) URL whose host :meth:`allows_host` accepts, written without parser tricks."""
        return self._url_refusal(url) is None

    def check(self, tool: str, args: Mapping[str, str]) -> str | None:
        """Why this tool call is out of scope, or None when it may run.

        Only ``collectors.Collect`` reaches the network on an agent's say-so: its ``url``,
        ``domain-name``, ``ipv4-addr`` and ``ipv6-addr`` targets are checked, and a fediverse
        ``user-account``'s instance; other target types (wallets, hashes, names, places) have no
        destination of their own. Other tools pass here (the
        roles decide who may call them).
        """
        if tool != COLLECT:
            return None
        target_type = str(args.get("target_type", "")).strip().lower()
        target = str(args.get("target", ""))
        if not target_type:
            return f"{COLLECT} without a target_type cannot be checked against the scope"
        if target_type == "url":
            refusal = self._url_refusal(target)
            return None if refusal is None else f"{refusal}; the scope allows {self.describe()}"
        if target_type == "domain-name":
            if self.allows_host(target):
                return None
            return f"domain {_shown(target)} is outside the investigation's scope ({self.describe()})"
        if target_type == "user-account":
            account_type, login = account_of(target)
            instance = login.rpartition("@")[2]
            if account_type != "mastodon" or self.allows_host(instance):
                return None  # a Bluesky account is read from the configured AppView, as a wallet from Esplora
            return f"the instance {_shown(instance)} of {_shown(target)} is outside the investigation's scope ({self.describe()})"
        version = _IP_TARGET_TYPES.get(target_type)
        if version is not None:
            address = _ip_literal(target.strip())
            if address is None or address.version != version:
                return f"{_shown(target)} is not an IPv{version} address"
            if self.allows_address(target.strip()):
                return None
            return (f"IP address {address} is outside the investigation's scope ({self.describe()}) and no "
                    f"in-scope name was seen resolving to it")
        return None

    # --- growth ---------------------------------------------------------------------------------

    def widen(self, host: str, reason: str) -> bool:
        """Add one exact host an in-scope page names (not its parent, not its subdomains).

        True when the scope grew; False when the host was already in scope or is refused: an IP
        literal (addresses come in only through allow CIDRs), a name the Public Suffix List does not
        know (``metadata.google.internal``), a special-use or public-suffix name, or past
        :data:`MAX_WIDENED_HOSTS`. A scope with no network part (a wallet's) does not grow one.
        """
        if not reason.strip():
            raise ValueError("widen needs a reason (it is the audit trail of how the scope grew)")
        if not (self.domains or self.networks or self.hosts) or len(self.hosts) >= MAX_WIDENED_HOSTS:
            return False
        if _ip_literal(host) is not None or host.startswith("["):
            return False
        try:
            name = normalise_host(host)
        except ValueError:
            return False
        suffix = public_suffix(name)
        if suffix is None or suffix == name or _under(name, _SPECIAL_USE_SUFFIXES) or self.allows_host(name):
            return False
        self.hosts[name] = " ".join(reason.split())[:500]
        return True

    def note_resolution(self, name: str, ip: str) -> bool:
        """Record that in-scope ``name`` resolved to ``ip``, so collectors may look the address up.

        True when recorded. Refused for an out-of-scope name, and for an address that is not
        globally routable (private, loopback, link-local, metadata): an attacker's in-scope name
        resolving to 169.254.169.254 must not make that address collectable (DNS rebinding).
        """
        address = _ip_literal(ip)
        if address is None or _ip_literal(name) is not None or not self.allows_host(name):
            return False
        address = _forms(address)[-1]  # an IPv4-mapped IPv6 answer is recorded as the IPv4 address it reaches
        if not address.is_global or len(self.resolutions) >= MAX_RESOLUTIONS:
            return False
        self.resolutions.setdefault(str(address), normalise_host(name))
        return True

    # --- description and persistence ----------------------------------------------------------

    @property
    def allow(self) -> tuple[str, ...]:
        """The allow entries in effect (domains, then CIDRs), as ``Scope.allow`` in the API shows them."""
        return (*self.domains, *(str(network) for network in self.networks))

    def describe(self, limit: int = 5) -> str:
        """A one-line summary for refusal messages."""
        entries = [*self.allow, *self.hosts]
        if not entries:
            return "no network destinations"
        shown = ", ".join(entries[:limit])
        return shown if len(entries) <= limit else f"{shown} and {len(entries) - limit} more"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; :meth:`from_dict` rebuilds the same scope."""
        return {
            "version": 1,
            "domains": list(self.domains),
            "networks": [str(network) for network in self.networks],
            "hosts": dict(self.hosts),
            "resolutions": dict(self.resolutions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scope:
        """Rebuild a persisted scope; entries are re-validated for form (not re-judged for breadth).

        Raises :class:`ScopeError` for data this module did not write.
        """
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ScopeError("not a persisted scope (version 1)")
        try:
            domains = tuple(normalise_host(_text(item)) for item in _list(data.get("domains", [])))
            networks = tuple(ipaddress.ip_network(_text(item)) for item in _list(data.get("networks", [])))
            hosts = {normalise_host(_text(key)): _text(value) for key, value in _dict(data.get("hosts", {})).items()}
            resolutions: dict[str, str] = {}
            for ip, name in _dict(data.get("resolutions", {})).items():
                address = _ip_literal(_text(ip))
                if address is None:
                    raise ScopeError(f"resolution key {ip!r} is not an IP address")
                resolutions[str(address)] = normalise_host(_text(name))
        except ValueError as error:  # ScopeError is one
            raise ScopeError(f"persisted scope is malformed: {error}") from error
        return cls(domains, networks, hosts, resolutions)

    # --- internals -----------------------------------------------------------------------------

    def _in_networks(self, address: IPAddress) -> bool:
        return any(form in network for form in _forms(address) for network in self.networks
                   if network.version == form.version)

    def _url_refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched, or None.

        Parsed strictly and checked twice: our reading of the authority must agree with
        ``urllib.parse``'s, and anything that URL parsers read differently (a backslash, which
        WHATWG reads as a slash; whitespace and controls, which it strips; userinfo, where
        ``http://example.com@169.254.169.254/`` goes to the address, not the name; percent escapes
        in the host) is refused rather than interpreted.
        """
        if not isinstance(url, str) or not url:
            return "an empty URL"
        shown = _shown(url)
        if "\\" in url or any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
            return f"URL {shown} holds a backslash, whitespace or a control character"
        scheme, separator, rest = url.partition("://")
        if not separator or scheme.lower() not in _SCHEMES:
            return f"URL {shown} is not http:// or https://"
        end = min((index for index in (rest.find(char) for char in "/?#") if index >= 0), default=len(rest))
        authority = rest[:end]
        if "@" in authority:
            return f"URL {shown} carries userinfo (user@host), which hides its real host"
        host = _authority_host(authority)
        if host is None:
            return f"URL {shown} has no valid host and port"
        try:
            parsed_host = urllib.parse.urlsplit(url).hostname or ""
        except ValueError:
            return f"URL {shown} does not parse"
        if parsed_host != host.strip("[]").lower():
            return f"URL {shown} reads as two different hosts"
        if not self.allows_host(host):
            return f"host {_shown(host)} of URL {shown} is outside the investigation's scope"
        return None


def _allow_entry(entry: str) -> str | IPNetwork:
    """One allow entry as a canonical domain or a network, or ScopeError saying what to write."""
    if not isinstance(entry, str) or not entry.strip():
        raise ScopeError("an empty allow entry")
    text = entry.strip()
    shown = _shown(text)
    if "://" in text:
        raise ScopeError(f"allow entry {shown} is a URL; give its host name (it covers the subdomains too)")
    if text.startswith("*."):
        raise ScopeError(f"allow entry {shown}: write {text[2:]!r}; a domain entry covers the name and its subdomains")
    if "/" in text or _ip_literal(text) is not None:
        return _allow_network(text, shown)
    try:
        name = normalise_host(text)
    except ValueError as error:
        raise ScopeError(f"allow entry {shown} is neither a domain name nor a CIDR ({error})") from error
    suffix = public_suffix(name)
    if suffix == name:
        raise ScopeError(f"allow entry {shown} is a public suffix; name a registrable domain under it")
    if _under(name, _NEVER_SUFFIXES):
        raise ScopeError(f"allow entry {shown} is a special-use name (loopback or never resolvable)")
    return name


def _allow_network(text: str, shown: str) -> IPNetwork:
    try:
        network = ipaddress.ip_network(text.strip("[]"), strict=True)
    except ValueError as error:
        try:
            suggestion = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        except ValueError:
            suggestion = ""
        raise ScopeError(f"allow entry {shown} is not a valid CIDR ({error}){suggestion}") from error
    minimum = _MIN_PREFIX[network.version]
    if network.prefixlen < minimum:
        raise ScopeError(f"allow entry {shown} is broader than /{minimum}; name the ranges you mean")
    return _checked_network(network, f"allow entry {shown}")


def _checked_network(network: IPNetwork, what: str) -> IPNetwork:
    for forbidden in _FORBIDDEN_NETWORKS:
        if network.version == forbidden.version and network.overlaps(forbidden):
            raise ScopeError(f"{what} overlaps {forbidden}: loopback, link-local, metadata and reserved addresses "
                             f"are never in scope")
    return network


def _ip_literal(host: str) -> IPAddress | None:
    """An IP address written in canonical literal form (``[v6]`` too); None for anything else.

    Zone indexes (``fe80::1%eth0``) are refused by the callers via None: they name an interface.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forms(address: IPAddress) -> tuple[IPAddress, ...]:
    """The address and, for an IPv4-mapped IPv6 address, the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return (address, address.ipv4_mapped)
    return (address,)


def _authority_host(authority: str) -> str | None:
    """The host of ``host[:port]`` or ``[v6][:port]``; None when the port or the brackets are bad."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        host, rest = authority[: close + 1], authority[close + 1 :]
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            return None
    else:
        host, colon, port_text = authority.partition(":")
        port = port_text if colon else None
    if not host or "%" in host or (port and (not port.isascii() or not port.isdigit() or int(port) > 65535)):
        return None
    return host


def _under(name: str, suffixes: Iterable[str]) -> bool:
    return any(name == suffix or name.endswith("." + suffix) for suffix in suffixes)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 100 else value[:97] + "...")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ScopeError(f"expected a string, got {type(value).__name__}")
    return value


def _list(value: object) -> Iterable[object]:
    if not isinstance(value, list):
        raise ScopeError(f"expected a list, got {type(value).__name__}")
    return value


def _dict(value: object) -> Mapping[object, object]:
    if not isinstance(value, dict):
        raise ScopeError(f"expected an object, got {type(value).__name__}")
    return value
