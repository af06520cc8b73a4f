"""Indicator extraction on realistic report text (the real extractor: refang, candidate scan, validation)."""

from __future__ import annotations

import base64
import random
import time

import pytest

from bev.wallets import is_valid_bitcoin_address
from services.collectors.indicators import (
    INDICATOR_TYPES,
    Homoglyph,
    Indicator,
    extract_indicators,
    to_ascii_host,
    to_unicode_host,
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
    # The ioc-finder grammars used before took ~16 s on 100 KB of spaces; indented HTML and padded logs look like that.
    padded = ("<td>" + " " * 5000 + "C2 198.51.100[.]23</td>\n") * 20
    payload = "data:application/octet-stream;base64," + base64.b64encode(random.Random(5).randbytes(60_000)).decode()
    began = time.perf_counter()
    found = extract_indicators(padded + payload + " url hxxps://cdn.example-delivery[.]com/" + "A" * 300)
    assert time.perf_counter() - began < 1.0
    assert {(i.type, i.value) for i in found} >= {("ipv4", "198.51.100.23"),
                                                  ("url", "https://cdn.example-delivery.com/" + "A" * 300)}


# --- Internationalised domain names (IDN) and homoglyphs -----------------------------------------
# Confusable letters are written as escapes so the source shows which is which: \u0430, \u0441 and
# \u043e are the Cyrillic look-alikes of a, c and o.


def _one(indicators: list[Indicator], type_name: str) -> Indicator:
    (match,) = [item for item in indicators if item.type == type_name]
    return match


def test_unicode_idn_is_extracted_whole_as_a_labels() -> None:
    found = extract_indicators(
        "Lures on bücher.de, Straße.de and пример.рф (also ПРИМЕР[.]РФ), "
        "the Japanese site 例え.jp and भारत.com."
    )
    assert [(item.value, item.unicode_value) for item in found] == [
        ("xn--bcher-kva.de", "bücher.de"),
        ("xn--e1afmkfd.xn--p1ai", "пример.рф"),  # the Unicode TLD too; defanged and upper case are one
        ("xn--h2brj9c.com", "भारत.com"),  # Devanagari vowel signs are marks, not \w: kept all the same
        ("xn--r8jz45g.jp", "例え.jp"),
        ("xn--strae-oqa.de", "straße.de"),  # IDNA 2008 (non-transitional): ß is not folded to ss
    ]
    assert {item.type for item in found} == {"domain"}
    assert all(item.homoglyph is None for item in found)  # single-script names are not suspicious
    # As for ASCII names (buecher.example), the TLD must be a delegated one: none of these is cut, none reported.
    assert extract_indicators("buecher.example bücher.example xn--bcher-kva.example 例え.テスト") == []


def test_punycode_and_unicode_spellings_are_one_indicator() -> None:
    found = extract_indicators("xn--bcher-kva.de and bücher.de; XN--E1AFMKFD.XN--P1AI and пример.рф")
    assert found == [Indicator("domain", "xn--bcher-kva.de"), Indicator("domain", "xn--e1afmkfd.xn--p1ai")]
    assert [item.unicode_value for item in found] == ["bücher.de", "пример.рф"]
    assert to_ascii_host("Bücher.DE") == "xn--bcher-kva.de"
    assert to_unicode_host("xn--bcher-kva.de") == "bücher.de"
    assert to_unicode_host(to_ascii_host("例え.jp")) == "例え.jp"
    assert to_unicode_host("evil.org") == "evil.org"


def test_mixed_script_name_is_flagged_not_truncated() -> None:
    found = extract_indicators("Phish at ex\u0430mple.com and p\u0430ypal.com; decoded from xn--pypal-4ve.com")
    assert _of(found, "domain") == {"xn--exmple-4nf.com", "xn--pypal-4ve.com"}  # never "mple.com", "ypal.com"
    example, paypal = found
    assert example.unicode_value == "ex\u0430mple.com"
    assert example.homoglyph == Homoglyph(("Cyrillic", "Latin"), mixed_script=True, skeleton="example.com")
    assert paypal.homoglyph == Homoglyph(("Cyrillic", "Latin"), mixed_script=True, skeleton="paypal.com")

    # Whole-script spoof: no label mixes scripts, but every letter has an ASCII look-alike.
    (coca,) = extract_indicators("\u0441\u043e\u0441\u0430.com")
    assert coca.homoglyph == Homoglyph(("Cyrillic", "Latin"), mixed_script=False, skeleton="coca.com")

    # UTS #39 lets Japanese mix Han and kana (and Latin); a Cyrillic name under .рф imitates nothing.
    assert all(item.homoglyph is None for item in extract_indicators("例えテスト.jp 日本語abc.jp пример.рф"))


def test_urls_and_emails_with_idn_hosts_stay_whole() -> None:
    found = extract_indicators(
        "Kit at hxxps://пример[.]рф/вход?id=7 and https://bücher.de/a.php, mail ops[at]пример[.]рф "
        "or user@bücher.de; spoof https://p\u0430ypal.com/login."
    )
    urls = {item.value: item for item in found if item.type == "url"}
    assert set(urls) == {
        "https://xn--e1afmkfd.xn--p1ai/%D0%B2%D1%85%D0%BE%D0%B4?id=7",  # non-ASCII path percent-encoded
        "https://xn--bcher-kva.de/a.php",
        "https://xn--pypal-4ve.com/login",
    }
    assert urls["https://xn--e1afmkfd.xn--p1ai/%D0%B2%D1%85%D0%BE%D0%B4?id=7"].unicode_value == (
        "https://пример.рф/вход?id=7"
    )
    spoof = urls["https://xn--pypal-4ve.com/login"]
    assert spoof.unicode_value == "https://p\u0430ypal.com/login"
    assert spoof.homoglyph is not None and spoof.homoglyph.skeleton == "paypal.com"
    emails = {item.value: item.unicode_value for item in found if item.type == "email"}
    assert emails == {"ops@xn--e1afmkfd.xn--p1ai": "ops@пример.рф", "user@xn--bcher-kva.de": "user@bücher.de"}
    assert _of(found, "domain") == {"xn--e1afmkfd.xn--p1ai", "xn--bcher-kva.de", "xn--pypal-4ve.com"}

    # A URL on an ASCII host with a Unicode path is no longer cut at the path's first non-ASCII letter.
    (url,) = [item for item in extract_indicators("see https://example.com/путь now") if item.type == "url"]
    assert (url.value, url.unicode_value) == ("https://example.com/%D0%BF%D1%83%D1%82%D1%8C", "https://example.com/путь")


def test_email_with_a_non_ascii_local_part_is_not_cut() -> None:
    # The candidate email shape is ASCII: "iv\u0430n@" must not come out as "n@...".
    assert extract_indicators("write to iv\u0430n@пример.рф") == [Indicator("domain", "xn--e1afmkfd.xn--p1ai")]


def test_percent_encoded_idn_in_a_url_is_not_cut() -> None:
    found = extract_indicators("redirect https://t.example.net/?u=https%3A%2F%2Fp%D0%B0ypal.com%2Flogin")
    assert _of(found, "domain") == {"t.example.net", "xn--pypal-4ve.com"}  # not "ypal.com"
    (url,) = [item for item in found if item.type == "url"]
    assert url.unicode_value == "https://t.example.net/?u=https%3A%2F%2Fp\u0430ypal.com%2Flogin"


def test_ascii_text_is_unaffected() -> None:
    found = extract_indicators(REPORT)  # REPORT has an em dash, so it takes the Unicode path
    assert found == extract_indicators(REPORT.replace("—", "-"))  # ... and gives what pure ASCII gives
    assert all(item.unicode_value == "" and item.homoglyph is None for item in found)
    assert "badactor.biz" in _of(found, "domain")
    # ASCII next to words of a script written without spaces stays as before (not glued into the name).
    assert extract_indicators("访问google.com 和 naver.com에서") == [
        Indicator("domain", "google.com"),
        Indicator("domain", "naver.com"),
    ]


def test_invalid_idna_is_rejected_gracefully() -> None:
    text = (
        "a \u0301ab.com b abc\u05e9\u05dc\u05d5\u05dd.com c xn--zz.com d https://xn--zz.com/x "
        "e a_\u00fc.com f " + "\u043f." * 300 + "com g evil[.]org"
    )
    # A leading combining mark, Hebrew glued to Latin (the Bidi rule), a fake A-label, '_' in an IDN,
    # a name longer than DNS allows: none is reported, and no part of one either.
    assert extract_indicators(text) == [Indicator("domain", "evil.org")]
    for host in ("\u0301ab.com", "xn--zz.com", "-bücher.de"):
        with pytest.raises(ValueError):
            to_ascii_host(host)
    with pytest.raises(ValueError):
        to_unicode_host("xn--zz.com")


def test_unicode_hosts_stay_linear() -> None:
    rng = random.Random(7)
    unspaced = "".join(rng.choice(["访问", "网站", "中国", "a.b", "例え.jp", "。", "x"]) for _ in range(20_000))
    chains = "\u043f." * 20_000 + " " + "\u043f[.]" * 20_000 + " " + "https://пример.рф/" + "п/" * 20_000
    began = time.perf_counter()
    extract_indicators(unspaced)
    extract_indicators(chains)
    elapsed = time.perf_counter() - began
    print(f"\n~200 KB of adversarial Unicode: {elapsed * 1000:.0f} ms")
    assert elapsed < 5.0
