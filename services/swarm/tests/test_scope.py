"""The scope check every Collect an agent asks for passes first."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from services.swarm.scope import MAX_WIDENED_HOSTS, Scope, ScopeError
from services.swarm.targets import infer_target

COLLECT = "collectors.Collect"


def scope_for(value: str, *allow: str, declared: str = "") -> Scope:
    return Scope.build(infer_target(value, declared), list(allow))


def collect(target_type: str, target: str) -> dict[str, str]:
    return {"collector": "web", "target_type": target_type, "target": target}


# --- defaults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "domains", "networks"),
    [
        ("example.com", ("example.com",), ()),
        ("browser-update.example.com", ("example.com",), ()),
        ("evil[.]shop[.]example[.]co[.]uk", ("example.co.uk",), ()),
        ("https://login.example.com/x?y=1", ("example.com",), ()),
        ("bob@mail.example.org", ("example.org",), ()),
        ("пример.рф", ("xn--e1afmkfd.xn--p1ai",), ()),
        ("evil.github.io", ("evil.github.io",), ()),  # private PSL section: not all of github.io
        ("93.184.216.34", (), ("93.184.216.34/32",)),
        ("2001:db8::1", (), ("2001:db8::1/128",)),
        ("http://93.184.216.34:8080/", (), ("93.184.216.34/32",)),
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", (), ()),
        ("d41d8cd98f00b204e9800998ecf8427e", (), ()),
    ],
)
def test_default_scope(target: str, domains: tuple[str, ...], networks: tuple[str, ...]) -> None:
    scope = scope_for(target)
    assert scope.domains == domains
    assert tuple(str(network) for network in scope.networks) == networks
    assert not scope.hosts and not scope.resolutions


def test_names_get_no_network_scope() -> None:
    scope = scope_for("PaleMoth", declared="threat-actor")
    assert scope.allow == ()
    assert not scope.allows_host("example.com")
    assert scope.check(COLLECT, collect("domain-name", "example.com")) is not None
    assert scope.check(COLLECT, collect("url", "https://example.com/")) is not None
    assert scope.check(COLLECT, collect("x-crypto-address", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")) is None
    assert scope.describe() == "no network destinations"


def test_a_public_suffix_target_scopes_to_itself_only() -> None:
    scope = scope_for("co.uk", declared="domain")
    assert scope.domains == ()
    assert scope.allows_host("co.uk")
    assert not scope.allows_host("example.co.uk")


@pytest.mark.parametrize(
    "target",
    ["169.254.169.254", "127.0.0.1", "::1", "http://169.254.169.254/latest/meta-data/",
     "http://example.com@169.254.169.254/", "fe80::1"],
)
def test_targets_in_forbidden_ranges_are_refused(target: str) -> None:
    with pytest.raises(ScopeError, match="never in scope"):
        scope_for(target)


def test_loopback_names_are_refused_as_targets() -> None:
    with pytest.raises(ScopeError, match="special-use"):
        scope_for("app.localhost", declared="domain")


# --- explicit allow lists --------------------------------------------------------------------------


def test_allow_entries_replace_the_default() -> None:
    scope = scope_for("www.example.com", " Example.COM. ", "partner.example.net", "203.0.113.0/24", "198.51.100.7")
    assert scope.domains == ("example.com", "partner.example.net")
    assert scope.networks == (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.7/32"))
    assert scope.allow == ("example.com", "partner.example.net", "203.0.113.0/24", "198.51.100.7/32")
    assert scope.allows_host("cdn.partner.example.net")
    assert not scope.allows_host("example.net")
    assert scope.allows_host("203.0.113.250")
    assert not scope.allows_host("203.0.114.1")


def test_allow_entries_are_deduplicated_and_idn_normalised() -> None:
    scope = scope_for("xn--e1afmkfd.xn--p1ai", "пример.рф", "xn--e1afmkfd.xn--p1ai", "ПРИМЕР.РФ")
    assert scope.domains == ("xn--e1afmkfd.xn--p1ai",)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("", "empty allow entry"),
        ("   ", "empty allow entry"),
        ("*.example.com", "write 'example.com'"),
        ("https://example.com/", "is a URL"),
        ("co.uk", "public suffix"),
        ("github.io", "public suffix"),
        ("com", "neither a domain name nor a CIDR"),
        ("exa mple.com", "neither a domain name nor a CIDR"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("0.0.0.0/0", "broader than /8"),
        ("::/0", "broader than /32"),
        ("127.0.0.0/24", "never in scope"),
        ("169.254.169.254", "never in scope"),
        ("169.254.0.0/16", "never in scope"),
        ("fd00:ec2::254", "never in scope"),  # AWS's IPv6 metadata endpoint
        ("::ffff:0:0/96", "never in scope"),  # IPv4-mapped space would re-open all of IPv4
        ("224.0.0.0/8", "never in scope"),
        ("app.localhost", "special-use"),
    ],
)
def test_bad_allow_entries(entry: str, needle: str) -> None:
    with pytest.raises(ScopeError, match=needle) as caught:
        scope_for("203.0.113.9", entry, "203.0.113.0/24")
    assert "\n" not in str(caught.value)


def test_allow_list_must_cover_the_target() -> None:
    with pytest.raises(ScopeError, match=re.escape("excludes the target 'example.com' itself")):
        scope_for("example.com", "10.0.0.0/8")
    with pytest.raises(ScopeError, match="excludes the target"):
        scope_for("https://www.example.com/", "other.example")
    # Wallets, hashes and names have no destination to exclude; the entries still apply.
    scope = scope_for("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "explorer.example.com")
    assert scope.allows_url("https://explorer.example.com/address/1A1z")


def test_private_ranges_may_be_allowed_explicitly() -> None:
    scope = scope_for("10.1.2.3", "10.0.0.0/8")
    assert scope.allows_url("http://10.200.0.1/")
    assert not scope.allows_url("http://169.254.169.254/")


def test_allow_must_be_a_list_not_a_string() -> None:
    with pytest.raises(ScopeError, match="not one string"):
        Scope.build(infer_target("example.com"), "example.com")


# --- hosts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("example.com", True),
        ("EXAMPLE.COM", True),
        ("example.com.", True),
        ("deep.sub.example.com", True),
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\u3002\uff43\uff4f\uff4d", True),  # full-width spelling maps to the same name
        ("notexample.com", False),
        ("example.com.evil.net", False),
        ("example.co", False),
        ("com", False),
        ("evil.net/.example.com", False),  # not a host name at all
        ("evil.net#.example.com", False),
        ("example.com:443", False),
        ("", False),
        ("93.184.216.34", False),  # an IP literal is never allowed merely because a domain is
        ("[2001:db8::1]", False),
        ("2130706433", False),  # 127.0.0.1 as one number
        ("0x7f.0.0.1", False),
    ],
)
def test_allows_host(host: str, allowed: bool) -> None:
    assert scope_for("browser-update.example.com").allows_host(host) is allowed


def test_idn_hosts_match_in_either_spelling() -> None:
    scope = scope_for("пример.рф")
    assert scope.allows_host("почта.пример.рф")
    assert scope.allows_host("xn--80a1acny.xn--e1afmkfd.xn--p1ai")
    assert not scope.allows_host("xn--e1afmkfd.com")


def test_ip_literals_by_cidr_including_ipv4_mapped_ipv6() -> None:
    scope = scope_for("203.0.113.9", "203.0.113.0/24", "2001:db8::/48")
    assert scope.allows_host("203.0.113.77")
    assert scope.allows_host("::ffff:203.0.113.77")  # the same destination written as IPv6
    assert scope.allows_host("[2001:db8::5]")
    assert scope.allows_host("2001:db8:0:1::5")
    assert not scope.allows_host("2001:db9::1")
    assert not scope.allows_host("fe80::1%eth0")


# --- URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://example.com/", True),
        ("http://www.example.com:8080/a?b=c#d", True),
        ("HTTPS://WWW.EXAMPLE.COM./", True),
        ("https://example.com", True),
        ("http://www.example.com?@evil.net", True),  # the query holds the "@": the host is www.example.com
        ("http://example.com@169.254.169.254/", False),  # userinfo: the real host is the metadata address
        ("http://user:pass@example.com/", False),  # userinfo is refused outright
        ("http://example.com\\@evil.net/", False),  # WHATWG reads the backslash as a slash
        ("http://evil.net\\.example.com/", False),
        ("http://evil.net#@example.com", False),
        ("http://evil.net/.example.com", False),
        ("http://example.com%2Eevil.net/", False),
        ("http://exa\tmple.com/", False),  # WHATWG strips tabs: refuse rather than guess
        (" https://example.com/", False),
        ("http:example.com", False),
        ("http:/example.com", False),
        ("http:///example.com", False),
        ("ftp://example.com/", False),
        ("file:///etc/passwd", False),
        ("javascript:alert(1)//example.com", False),
        ("http://example.com:99999/", False),
        ("http://example.com:8o/", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://[::ffff:169.254.169.254]/", False),
        ("http://[fe80::1%25eth0]/", False),
        ("http://2130706433/", False),
        ("http://[::1/", False),
        ("", False),
    ],
)
def test_allows_url(url: str, allowed: bool) -> None:
    assert scope_for("browser-update.example.com").allows_url(url) is allowed


def test_allows_url_with_ipv6_literal_in_cidr() -> None:
    scope = scope_for("2001:db8::1", "2001:db8::/32")
    assert scope.allows_url("http://[2001:db8::abcd]:8443/x")
    assert not scope.allows_url("http://[2001:db9::1]/")
    assert not scope.allows_url("http://2001:db8::1/")  # unbracketed: not a valid authority


# --- widening -------------------------------------------------------------------------------------------


def test_widen_adds_the_exact_host_only() -> None:
    scope = scope_for("example.com")
    assert scope.widen("cdn.partner.net", "linked from https://example.com/")
    assert scope.allows_host("cdn.partner.net")
    assert scope.allows_url("https://cdn.partner.net/lib.js")
    assert not scope.allows_host("partner.net")  # not its parent
    assert not scope.allows_host("x.cdn.partner.net")  # nor its subdomains
    assert scope.hosts == {"cdn.partner.net": "linked from https://example.com/"}
    assert not scope.widen("CDN.partner.net.", "again")  # already in: nothing changes
    assert not scope.widen("www.example.com", "already covered")


@pytest.mark.parametrize(
    "host",
    ["93.184.216.34", "169.254.169.254", "[::1]", "::ffff:10.0.0.1", "metadata.google.internal", "printer.local",
     "app.localhost", "foo.test", "router.home.arpa", "co.uk", "localhost", "dropper.exe", "evil.net/x"],
)
def test_widen_refuses(host: str) -> None:
    scope = scope_for("example.com")
    assert not scope.widen(host, "named by a page")
    assert scope.hosts == {}


def test_widen_needs_a_reason_and_a_network_scope() -> None:
    scope = scope_for("example.com")
    with pytest.raises(ValueError, match="reason"):
        scope.widen("cdn.partner.net", "  ")
    wallet = scope_for("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
    assert not wallet.widen("explorer.example.com", "named by a page")


def test_widen_is_capped() -> None:
    scope = scope_for("example.com")
    for index in range(MAX_WIDENED_HOSTS):
        assert scope.widen(f"h{index}.partner.net", "page")
    assert not scope.widen("one-more.partner.net", "page")


# --- resolutions and check() ---------------------------------------------------------------------------


def test_resolutions_allow_ip_collection_but_not_fetching() -> None:
    scope = scope_for("example.com")
    assert scope.check(COLLECT, collect("ipv4-addr", "93.184.216.34")) is not None
    assert scope.note_resolution("www.example.com", "93.184.216.34")
    assert scope.note_resolution("www.example.com", "2606:2800:220:1:248:1893:25c8:1946")
    assert scope.check(COLLECT, collect("ipv4-addr", "93.184.216.34")) is None
    assert scope.check(COLLECT, collect("ipv6-addr", "2606:2800:220:1:248:1893:25c8:1946")) is None
    assert not scope.allows_url("http://93.184.216.34/")  # a resolution is not a fetchable host
    assert scope.resolutions["93.184.216.34"] == "www.example.com"


def test_an_ipv4_mapped_resolution_is_recorded_as_ipv4() -> None:
    scope = scope_for("example.com")
    assert scope.note_resolution("example.com", "::ffff:93.184.216.34")
    assert scope.resolutions == {"93.184.216.34": "example.com"}
    assert scope.check(COLLECT, collect("ipv4-addr", "93.184.216.34")) is None


@pytest.mark.parametrize(
    ("name", "ip"),
    [
        ("evil.net", "93.184.216.34"),  # the name is out of scope
        ("www.example.com", "169.254.169.254"),  # DNS rebinding to the metadata address
        ("www.example.com", "127.0.0.1"),
        ("www.example.com", "10.0.0.5"),
        ("www.example.com", "::ffff:169.254.169.254"),  # the same, written as IPv4-mapped IPv6
        ("www.example.com", "not-an-ip"),
        ("93.184.216.34", "93.184.216.34"),
    ],
)
def test_note_resolution_refuses(name: str, ip: str) -> None:
    scope = scope_for("example.com")
    assert not scope.note_resolution(name, ip)
    assert scope.resolutions == {}


def test_check_collect_targets() -> None:
    scope = scope_for("browser-update.example.com")
    assert scope.check(COLLECT, collect("url", "https://www.example.com/")) is None
    assert scope.check(COLLECT, collect("domain-name", "mail.example.com")) is None
    refusal = scope.check(COLLECT, collect("url", "http://example.com@169.254.169.254/"))
    assert refusal is not None and "userinfo" in refusal
    refusal = scope.check(COLLECT, collect("domain-name", "evil.net"))
    assert refusal is not None and "evil.net" in refusal and "example.com" in refusal
    assert scope.check(COLLECT, collect("URL", "http://evil.net/")) is not None  # types compared case-blind
    assert scope.check(COLLECT, collect("ipv4-addr", "169.254.169.254")) is not None
    assert scope.check(COLLECT, collect("ipv4-addr", "2001:db8::1")) is not None  # the wrong family
    assert scope.check(COLLECT, collect("ipv6-addr", "93.184.216.34")) is not None
    assert scope.check(COLLECT, {"collector": "web", "target": "http://evil.net/"}) is not None
    # No network destination of their own: left to the collectors' own guard.
    assert scope.check(COLLECT, collect("x-crypto-address", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")) is None
    assert scope.check(COLLECT, collect("file", "d41d8cd98f00b204e9800998ecf8427e")) is None
    assert scope.check(COLLECT, collect("threat-actor", "PaleMoth")) is None


def test_check_allows_ip_targets_in_cidr() -> None:
    scope = scope_for("203.0.113.9", "203.0.113.0/24")
    assert scope.check(COLLECT, collect("ipv4-addr", "203.0.113.200")) is None
    assert scope.check(COLLECT, collect("ipv4-addr", "203.0.112.1")) is not None


@pytest.mark.parametrize("tool", ["embeddings.Search", "collectors.GraphQuery", "reasoning.Analyze", "reasoning.Chat"])
def test_other_tools_are_not_scoped(tool: str) -> None:
    assert scope_for("PaleMoth", declared="malware").check(tool, {"target": "http://169.254.169.254/"}) is None


# --- persistence -----------------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    scope = scope_for("www.example.com", "example.com", "пример.рф", "203.0.113.0/24", "2001:db8::/48")
    scope.widen("cdn.partner.net", "linked from https://www.example.com/")
    scope.note_resolution("www.example.com", "93.184.216.34")
    data = json.loads(json.dumps(scope.to_dict()))
    rebuilt = Scope.from_dict(data)
    assert rebuilt == scope
    assert rebuilt.allows_host("cdn.partner.net") and rebuilt.allows_host("203.0.113.1")
    assert rebuilt.check(COLLECT, collect("ipv4-addr", "93.184.216.34")) is None
    assert rebuilt.to_dict() == data


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2},
        {"version": 1, "domains": "example.com"},
        {"version": 1, "domains": ["exa mple.com"]},
        {"version": 1, "networks": ["10.0.0.1/8"]},
        {"version": 1, "hosts": ["cdn.partner.net"]},
        {"version": 1, "resolutions": {"not-an-ip": "example.com"}},
        {"version": 1, "resolutions": {"93.184.216.34": 7}},
    ],
)
def test_from_dict_rejects_what_to_dict_never_wrote(data: dict[str, object]) -> None:
    with pytest.raises(ScopeError):
        Scope.from_dict(data)
