"""Indicator extraction on realistic report text (ioc-finder runs for real)."""

from __future__ import annotations

import base64
import random
import time

from services.collectors.indicators import (
    INDICATOR_TYPES,
    Indicator,
    extract_indicators,
    is_valid_bitcoin_address,
)

REPORT = """\
TLP:AMBER — Campaign summary, APT-Example (Q3)

Initial access came through phishing mail from ops[at]badactor[.]biz and Billing@Invoices-Portal.NET
linking to hxxps://update-check[.]example-cdn[.]com/dl/payload.bin. The loader then beaconed to
hxxp://198.51.100[.]23:8080/gate.php. Fallback C2 domains: malicious(dot)example(dot)net and
evil[.]org; the actor also used 203.0.113.7 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334.

Hashes:
  MD5    D41D8CD98F00B204E9800998ECF8427E
  SHA1   da39a3ee5e6b4b0d3255bfef95601890afd80709
  SHA256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  SHA512 cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e

The actor exploited cve-2021-44228 (Log4Shell) and CVE-2023-23397 (see CVE-2021-44228 again).
Ransom was paid to 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa and bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq;
proceeds moved to 0xde0B295669a9FD93d5F28D9Ec85E40f4cb697BAe. Repeated: 203.0.113.7, evil[.]org.
"""


def _of(indicators: list[Indicator], type_name: str) -> set[str]:
    return {item.value for item in indicators if item.type == type_name}


def test_every_type_is_found_refanged_and_normalised() -> None:
    found = extract_indicators(REPORT)

    assert _of(found, "ipv4") == {"198.51.100.23", "203.0.113.7"}
    assert _of(found, "ipv6") == {"2001:db8:85a3::8a2e:370:7334"}
    assert {"update-check.example-cdn.com", "malicious.example.net", "evil.org", "badactor.biz"} <= _of(
        found, "domain"
    )
    assert "invoices-portal.net" in _of(found, "domain")
    assert _of(found, "url") == {
        "https://update-check.example-cdn.com/dl/payload.bin",
        "http://198.51.100.23:8080/gate.php",  # trailing sentence period dropped
    }
    assert _of(found, "email") == {"ops@badactor.biz", "billing@invoices-portal.net"}
    assert _of(found, "md5") == {"d41d8cd98f00b204e9800998ecf8427e"}
    assert _of(found, "sha1") == {"da39a3ee5e6b4b0d3255bfef95601890afd80709"}
    assert _of(found, "sha256") == {"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
    assert len(_of(found, "sha512")) == 1
    assert _of(found, "cve") == {"CVE-2021-44228", "CVE-2023-23397"}
    assert _of(found, "btc_address") == {
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    }
    assert _of(found, "eth_address") == {"0xde0b295669a9fd93d5f28d9ec85e40f4cb697bae"}
    assert {item.type for item in found} == set(INDICATOR_TYPES)


def test_eth_address_is_not_also_reported_as_sha1() -> None:
    found = extract_indicators("wallet 0xde0B295669a9FD93d5F28D9Ec85E40f4cb697BAe")
    assert found == [Indicator("eth_address", "0xde0b295669a9fd93d5f28d9ec85e40f4cb697bae")]


def test_deduplicated_and_sorted_deterministically() -> None:
    first = extract_indicators(REPORT)
    assert len(first) == len(set(first))
    order = {name: index for index, name in enumerate(INDICATOR_TYPES)}
    assert first == sorted(first, key=lambda item: (order[item.type], item.value))
    assert extract_indicators(REPORT) == first
    # the same observable written defanged and fanged collapses to one indicator
    assert extract_indicators("evil[.]org evil.org EVIL(dot)ORG") == [Indicator("domain", "evil.org")]


def test_bitcoin_checksum_filters_lookalikes() -> None:
    assert is_valid_bitcoin_address("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
    assert is_valid_bitcoin_address("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy")
    assert is_valid_bitcoin_address("bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297")
    assert not is_valid_bitcoin_address("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb")  # one char changed
    assert not is_valid_bitcoin_address("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdr")
    assert extract_indicators("pay 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb now") == []


def test_empty_and_benign_text() -> None:
    assert extract_indicators("") == []
    assert extract_indicators("Nothing to see in this sentence at all") == []


def test_100kb_base64_blob_is_fast_and_yields_no_false_positives() -> None:
    rng = random.Random(1234)
    blob = base64.b64encode(rng.randbytes(75_000)).decode()
    assert len(blob) == 100_000
    text = f"Dropped payload (base64) follows:\n{blob}\nC2 was evil[.]org"

    started = time.perf_counter()
    found = extract_indicators(text)
    elapsed = time.perf_counter() - started

    print(f"\n100 KB base64 blob: {elapsed * 1000:.0f} ms")
    assert found == [Indicator("domain", "evil.org")]
    assert elapsed < 5.0


def test_space_runs_and_encoded_tokens_stay_linear() -> None:
    # ioc-finder alone takes ~16 s on 100 KB of spaces; indented HTML and padded logs look like that.
    padded = ("<td>" + " " * 5000 + "C2 198.51.100[.]23</td>\n") * 20
    payload = "data:application/octet-stream;base64," + base64.b64encode(random.Random(5).randbytes(60_000)).decode()
    began = time.perf_counter()
    found = extract_indicators(padded + payload + " url hxxps://cdn.example-delivery[.]com/" + "A" * 300)
    assert time.perf_counter() - began < 1.0
    assert {(i.type, i.value) for i in found} >= {("ipv4", "198.51.100.23"),
                                                  ("url", "https://cdn.example-delivery.com/" + "A" * 300)}
