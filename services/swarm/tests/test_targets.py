"""Target typing: inference, declared types, normalisation and the errors an analyst sees."""

from __future__ import annotations

import dataclasses
import re

import pytest

from services.swarm.targets import (
    KINDS,
    STIX_TYPES,
    Target,
    UntypableTarget,
    infer_target,
    is_valid_bitcoin_address,
    is_valid_ethereum_address,
    normalise_host,
    public_suffix,
    refang,
    registrable_domain,
)

# Well-known addresses: the genesis coinbase (P2PKH), BIP-173 and BIP-350 test vectors, EIP-55 examples.
GENESIS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
P2SH = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
BECH32 = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
TAPROOT = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
ETH_CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@pytest.mark.parametrize(
    ("value", "kind", "canonical"),
    [
        ("example.com", "domain", "example.com"),
        ("  Browser-Update.EXAMPLE.com.  ", "domain", "browser-update.example.com"),
        ("evil[.]example(.)com", "domain", "evil.example.com"),
        ("пример.рф", "domain", "xn--e1afmkfd.xn--p1ai"),
        ("xn--e1afmkfd.xn--p1ai", "domain", "xn--e1afmkfd.xn--p1ai"),
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\u3002\uff43\uff4f\uff4d", "domain", "example.com"),  # full-width letters and ideographic full stop
        ("invoice.zip", "domain", "invoice.zip"),  # .zip is a real TLD
        ("_dmarc.example.com", "domain", "_dmarc.example.com"),
        ("https://Example.COM/Path?q=1#frag", "url", "https://example.com/Path?q=1#frag"),
        ("hxxps://evil[.]example[.]com/payload", "url", "https://evil.example.com/payload"),
        ("hXXp://evil.example.com", "url", "http://evil.example.com/"),
        ("http://пример.рф/путь", "url", "http://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C"),
        ("ftp://files.example.com:2121/a", "url", "ftp://files.example.com:2121/a"),
        ("http://[2001:DB8::1]:8080/", "url", "http://[2001:db8::1]:8080/"),
        ("8.8.8.8", "ipv4", "8.8.8.8"),
        ("8.8.8[.]8", "ipv4", "8.8.8.8"),
        ("2001:0DB8:0000::0001", "ipv6", "2001:db8::1"),
        ("[2001:db8::1]", "ipv6", "2001:db8::1"),
        ("Alice@Example.COM", "email", "Alice@example.com"),
        ("alice[at]example[.]com", "email", "alice@example.com"),
        (GENESIS, "btc", GENESIS),
        (P2SH, "btc", P2SH),
        (BECH32.upper(), "btc", BECH32),
        (TAPROOT, "btc", TAPROOT),
        (ETH_CHECKSUMMED, "eth", ETH_CHECKSUMMED.lower()),
        ("0x" + "ab" * 20, "eth", "0x" + "ab" * 20),
        ("D41D8CD98F00B204E9800998ECF8427E", "md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256",
         "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ],
)
def test_inference(value: str, kind: str, canonical: str) -> None:
    target = infer_target(value)
    assert target == Target(kind, canonical, STIX_TYPES[kind])


def test_stix_mapping_covers_every_kind() -> None:
    assert set(KINDS) == set(STIX_TYPES)
    assert {STIX_TYPES[kind] for kind in ("btc", "eth")} == {"x-crypto-address"}
    assert {STIX_TYPES[kind] for kind in ("md5", "sha1", "sha256")} == {"file"}
    assert STIX_TYPES["domain"] == "domain-name" and STIX_TYPES["ipv6"] == "ipv6-addr"


def test_target_is_frozen_and_knows_its_host() -> None:
    target = infer_target("https://user@evil.example.com:8443/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.kind = "domain"  # type: ignore[misc]
    assert target.host == "evil.example.com"
    assert infer_target("bob@example.org").host == "example.org"
    assert infer_target("http://[2001:db8::1]/").host == "2001:db8::1"
    assert infer_target(GENESIS).host is None


@pytest.mark.parametrize("value", ["PaleMoth", "Cobalt Strike", "APT28", "evil.exe", "readme.txt", "a.b.corp.internal"])
def test_names_and_unknown_tlds_are_not_guessed(value: str) -> None:
    with pytest.raises(UntypableTarget) as caught:
        infer_target(value)
    message = str(caught.value)
    assert "\n" not in message
    assert "threat-actor" in message and "malware" in message and "domain-name" in message
    assert "tried URL" in message


def test_near_misses_say_what_looked_wrong() -> None:
    with pytest.raises(UntypableTarget, match="bitcoin address but its checksum fails"):
        infer_target(GENESIS[:-1] + "b")
    with pytest.raises(UntypableTarget, match="EIP-55"):
        infer_target(ETH_CHECKSUMMED[:-1] + "D")
    with pytest.raises(UntypableTarget, match=r"TLD \.exe is not in the Public Suffix List"):
        infer_target("dropper.exe")


@pytest.mark.parametrize(
    ("declared", "value", "kind", "canonical"),
    [
        ("threat-actor", "  Pale   Moth ", "threat-actor", "Pale Moth"),
        ("intrusion-set", "APT28", "threat-actor", "APT28"),
        ("MALWARE", "PaleMoth", "malware", "PaleMoth"),
        ("malware", "evil.exe", "malware", "evil.exe"),
        ("domain-name", "a.b.corp.internal", "domain", "a.b.corp.internal"),  # declared: shape suffices
        ("domain", "evil[.]example[.]com", "domain", "evil.example.com"),
        ("ipv4-addr", "1.2.3.4", "ipv4", "1.2.3.4"),
        ("ipv6", "::1", "ipv6", "::1"),
        ("email-addr", "x@example.com", "email", "x@example.com"),
        ("x-crypto-address", GENESIS, "btc", GENESIS),
        ("x-crypto-address", ETH_CHECKSUMMED, "eth", ETH_CHECKSUMMED.lower()),
        ("file", "D41D8CD98F00B204E9800998ECF8427E", "md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("url", "https://example.com", "url", "https://example.com/"),
        (" sha1 ", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ],
)
def test_declared_types(declared: str, value: str, kind: str, canonical: str) -> None:
    assert infer_target(value, declared) == Target(kind, canonical, STIX_TYPES[kind])


@pytest.mark.parametrize(
    ("declared", "value", "needle"),
    [
        ("ipv4", "1.2.3", "not a valid ipv4"),
        ("ipv4", "2001:db8::1", "not a valid ipv4"),
        ("ipv6", "1.2.3.4", "not a valid ipv6"),
        ("domain", "1.2.3.4", "not a valid domain"),
        ("domain", "localhost", "single-label"),
        ("url", "example.com", "not a valid url"),
        ("url", "javascript:alert(1)", "not a valid url"),
        ("email", "not-an-email", "not a valid email"),
        ("btc", GENESIS[:-1] + "b", "not a valid btc"),
        ("eth", "0x1234", "not a valid eth"),
        ("sha256", "d41d8cd98f00b204e9800998ecf8427e", "not a valid sha256"),
        ("file", "zz" * 16, "not a valid file"),
        ("x-crypto-address", "d41d8cd98f00b204e9800998ecf8427e", "not a valid x-crypto-address"),
    ],
)
def test_declared_types_are_validated(declared: str, value: str, needle: str) -> None:
    with pytest.raises(UntypableTarget, match=needle) as caught:
        infer_target(value, declared)
    assert "\n" not in str(caught.value) and "accepted target_type values" in str(caught.value)


def test_unknown_declared_type_lists_the_accepted_ones() -> None:
    with pytest.raises(UntypableTarget, match=r"unknown target_type 'ftp'; accepted: domain, url, ipv4") as caught:
        infer_target("example.com", "ftp")
    assert "intrusion-set" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("a" * 2049, "over the limit of 2048"),
        ("exam\x00ple.com", "U+0000"),
        ("example.com\nevil.com", "U+000A"),
        ("exa\u202emple.com", "U+202E"),  # a right-to-left override (Trojan Source)
    ],
)
def test_values_are_bounded_and_printable(value: str, needle: str) -> None:
    with pytest.raises(UntypableTarget, match=re.escape(needle)):
        infer_target(value)
    with pytest.raises(UntypableTarget, match=re.escape(needle)):
        infer_target(value, "threat-actor")  # a declared name gets the same checks


def test_untypable_is_a_value_error() -> None:
    assert issubclass(UntypableTarget, ValueError)


@pytest.mark.parametrize(
    "value",
    [
        "127.1",  # shorthand IPv4 (inet_aton reads it as 127.0.0.1): neither an address nor a name
        "0x7f.0.0.1",
        "2130706433",
        "010.0.0.1",  # leading zeros: octal to some parsers
        "fe80::1%eth0",  # a zone index names a local interface
        "http:example.com",  # no "//": WHATWG would still find a host, so refuse rather than guess
        "http://exa mple.com/",
        "http://example.com\\@evil.com/",
        "gopher://example.com/",
        "http://",
        "xn--abc.com",  # not the Punycode of a valid label
        "-bad.example.com",
        "a..example.com",
        ("a" * 64) + ".com",
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb",
    ],
)
def test_malformed_values_are_refused(value: str) -> None:
    with pytest.raises(UntypableTarget):
        infer_target(value)


def test_url_keeps_userinfo_but_its_host_is_the_real_one() -> None:
    # A phishing URL written to look like example.com: the host is the address after the "@".
    target = infer_target("http://example.com@169.254.169.254/latest/meta-data/")
    assert target.kind == "url"
    assert target.host == "169.254.169.254"


def test_refang() -> None:
    assert refang("hxxps://evil[.]com/a") == "https://evil.com/a"
    assert refang("hXXp[:]//a(.)b{.}c") == "http://a.b.c"
    assert refang("fxp://files[dot]example[.]com") == "ftp://files.example.com"
    assert refang("bob[at]example(dot)com") == "bob@example.com"
    assert refang("PaleMoth") == "PaleMoth"


def test_normalise_host() -> None:
    assert normalise_host("WWW.Example.COM.") == "www.example.com"
    assert normalise_host("Bücher.example") == "xn--bcher-kva.example"
    assert normalise_host("faß.de") == "xn--fa-hia.de"  # non-transitional: ß stays ß
    for bad in ("example", "exa mple.com", "example.com/", "example.com:80", "a" * 250 + ".com", "ex%41mple.com", ""):
        with pytest.raises(ValueError):
            normalise_host(bad)


@pytest.mark.parametrize(
    ("host", "suffix", "registrable"),
    [
        ("example.com", "com", "example.com"),
        ("browser-update.example.com", "com", "example.com"),
        ("a.b.example.co.uk", "co.uk", "example.co.uk"),
        ("co.uk", "co.uk", None),
        ("evil.github.io", "github.io", "evil.github.io"),  # the PSL's private section counts
        ("github.io", "github.io", None),
        ("x.y.xn--55qx5d.cn", "xn--55qx5d.cn", "y.xn--55qx5d.cn"),  # 公司.cn, a rule written in Unicode
        ("www.city.kawasaki.jp", "kawasaki.jp", "city.kawasaki.jp"),  # an exception rule (!city.kawasaki.jp)
        ("a.b.kawasaki.jp", "b.kawasaki.jp", "a.b.kawasaki.jp"),  # a wildcard rule (*.kawasaki.jp)
        ("a.b.corp.internal", None, "corp.internal"),  # no rule: the PSL's implicit "*"
    ],
)
def test_public_suffix_list(host: str, suffix: str | None, registrable: str | None) -> None:
    assert public_suffix(host) == suffix
    assert registrable_domain(host) == registrable


def test_wallet_checksums() -> None:
    assert is_valid_bitcoin_address(GENESIS)
    assert is_valid_bitcoin_address(P2SH)
    assert is_valid_bitcoin_address(BECH32) and is_valid_bitcoin_address(BECH32.upper())
    assert is_valid_bitcoin_address(TAPROOT)
    assert not is_valid_bitcoin_address(BECH32[:-1] + "5")  # one character off
    assert not is_valid_bitcoin_address("bc1qW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")  # mixed case
    # A v1 (Taproot) program with the v0 Bech32 checksum: BIP-350 says invalid.
    assert not is_valid_bitcoin_address("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx")
    assert not is_valid_bitcoin_address("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx")  # testnet
    assert not is_valid_bitcoin_address("0" + GENESIS[1:])
    for address in (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        "0x52908400098527886E0F7030069857D2E4169EE7",  # all upper: no checksum encoded
        "0xde709f2102306220921060314715629080e2fb77",  # all lower: no checksum encoded
    ):
        assert is_valid_ethereum_address(address), address
    assert not is_valid_ethereum_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD")
    assert not is_valid_ethereum_address("0x" + "g" * 40)


@pytest.mark.parametrize(("value", "declared", "expected"), [
    ("@Lure@Social.Example.NET", "", "@lure@social.example.net"),  # one reading: a fediverse account
    ("lure.bsky.social", "bluesky", "@lure.bsky.social"),
    ("@lure.bsky.social", "user-account", "@lure.bsky.social"),
    ("https://social.example.net/@lure", "account", "@lure@social.example.net"),
])
def test_social_accounts_are_targets(value: str, declared: str, expected: str) -> None:
    target = infer_target(value, declared)
    assert (target.kind, target.value, target.stix_type) == ("account", expected, "user-account")


def test_an_account_points_at_its_instance_and_a_bluesky_one_at_nothing() -> None:
    assert infer_target("@lure@social.example.net").host == "social.example.net"
    assert infer_target("@lure.bsky.social", "bluesky").host is None
    assert infer_target("lure@example.com").kind == "email"  # without the leading @, an e-mail address
    with pytest.raises(UntypableTarget, match="fediverse account"):
        infer_target("@lure@localhost")
