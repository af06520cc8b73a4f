"""The SSRF guard's decisions, and the fetch path's limits, against local fixture servers only.

The bypass list is checked with `Fetcher.check`, which decides without connecting; names resolve
through the DNS fixture (127.0.0.1), so no packet leaves this machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.collectors.fetch import AddressPolicy, Fetcher, FetchFailed, FetchRefused, parse_numeric_host
from services.collectors.settings import FetchConfig
from services.collectors.testing import DnsFixture, HttpFixture

BYPASS_URLS = [
    # loopback, every spelling
    "http://127.0.0.1/", "http://127.1/", "http://127.0.1/", "http://2130706433/", "http://0x7f000001/",
    "http://0x7f.0x0.0x0.0x1/", "http://0177.0.0.1/", "http://017700000001/", "http://0177.1/",
    "http://127.0.0.1:6379/", "http://[::1]/", "http://[0:0:0:0:0:0:0:1]/",
    # IPv6 forms carrying a blocked IPv4
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::127.0.0.1]/", "http://[2002:7f00:1::]/",
    "http://[64:ff9b::7f00:1]/", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/", "http://[0:0:0:0:0:ffff:169.254.169.254]/",
    # names for this machine or the local network
    "http://localhost/", "http://LOCALHOST./", "http://foo.localhost/", "http://printer.local/",
    "http://foo.internal/", "http://instance-data/latest/",
    # cloud metadata
    "http://169.254.169.254/latest/meta-data/", "http://0xa9fea9fe/", "http://2852039166/",
    "http://[fd00:ec2::254]/", "http://metadata.google.internal/computeMetadata/v1/", "http://100.100.100.200/",
    # private, CGNAT (the tailnet), unspecified, link-local, multicast, reserved
    "http://10.0.0.1/", "http://0x0a000001/", "https://10.1.2.3:8443/", "http://172.16.0.1/", "http://192.168.1.1/",
    "http://100.64.0.1/", "http://100.127.255.254/", "http://0.0.0.0/", "http://0/", "http://[::]/",
    "http://[fe80::1]/", "http://[fc00::1]/", "http://224.0.0.1/", "http://255.255.255.255/", "http://192.0.0.170/",
    "http://198.18.0.1/",
    # DNS answers pointing inside (rebinding), checked on every address
    "http://rebind.attacker.test/", "http://meta.attacker.test/", "http://v6loop.attacker.test/",
    "http://mixed.attacker.test/", "http://cgnat.attacker.test/", "http://mapped.attacker.test/",
    "http://169.254.169.254.nip.test/",
    # schemes, credentials, Tor
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/", "http://user:pass@127.0.0.1/",
    "http://public.example@127.0.0.1/", "http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion/",
]


@pytest.fixture(scope="module")
def attacker_zone(dns_fixture: DnsFixture) -> DnsFixture:
    dns_fixture.add("rebind.attacker.test", "A", "127.0.0.1")
    dns_fixture.add("meta.attacker.test", "A", "169.254.169.254")
    dns_fixture.add("v6loop.attacker.test", "AAAA", "::1")
    dns_fixture.add("mixed.attacker.test", "A", "93.184.216.34", "10.0.0.1")
    dns_fixture.add("cgnat.attacker.test", "A", "100.64.0.1")
    dns_fixture.add("mapped.attacker.test", "AAAA", "::ffff:127.0.0.1")
    dns_fixture.add("169.254.169.254.nip.test", "A", "169.254.169.254")
    dns_fixture.add("public.attacker.test", "A", "93.184.216.34")
    return dns_fixture


def test_there_are_at_least_fifty_bypass_urls() -> None:
    assert len(set(BYPASS_URLS)) >= 50


@pytest.mark.parametrize("url", BYPASS_URLS)
async def test_bypass_url_is_refused(url: str, attacker_zone: DnsFixture) -> None:
    fetcher = Fetcher(FetchConfig(nameservers=[attacker_zone.nameserver], tor_socks_url=""))
    try:
        with pytest.raises(FetchRefused):
            await fetcher.check(url)
    finally:
        await fetcher.close()


async def test_public_addresses_pass_and_allowed_ranges_are_exact(attacker_zone: DnsFixture) -> None:
    fetcher = Fetcher(FetchConfig(nameservers=[attacker_zone.nameserver], allow_ranges=["127.0.0.0/8"]))
    try:
        target = await fetcher.check("https://public.attacker.test/a")
        assert [str(a) for a in target.addresses] == ["93.184.216.34"]
        assert (await fetcher.check("http://127.0.0.1:8080/")).addresses[0].is_loopback
        assert (await fetcher.check("http://2130706433/")).addresses[0].is_loopback  # numeric, but allowed here
        for still_blocked in ("http://10.0.0.1/", "http://[::1]/", "http://169.254.169.254/", "http://localhost/"):
            with pytest.raises(FetchRefused):
                await fetcher.check(still_blocked)
    finally:
        await fetcher.close()


def test_numeric_host_spellings_read_like_inet_aton() -> None:
    assert {str(parse_numeric_host(h)) for h in ("127.1", "0x7f000001", "017700000001", "2130706433")} == {"127.0.0.1"}
    assert parse_numeric_host("example.com") is None
    assert parse_numeric_host("1.2.3.4.5") is None
    assert AddressPolicy().refusal(parse_numeric_host("8.8.8.8")) is None  # type: ignore[arg-type]


@pytest.fixture
async def fetcher(http_fixture: HttpFixture) -> AsyncIterator[Fetcher]:
    config = FetchConfig(allow_ranges=["127.0.0.0/8"], max_bytes=64 * 1024, read_timeout_s=0.5,
                         per_domain_rate_per_s=1000, tor_socks_url="")
    instance = Fetcher(config)
    yield instance
    await instance.close()


async def test_fetch_connects_to_the_checked_address(fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/f/page.html", "<html><title>t</title><p>hello</p></html>")
    result = await fetcher.get(url)
    assert (result.status, result.content_type, result.via_tor) == (200, "text/html", False)
    assert b"hello" in result.body
    assert http_fixture.peers("/f/page.html") == ["127.0.0.1"]


async def test_content_type_outside_the_allowlist_is_refused(fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/f/blob", b"\x7fELF...", "application/octet-stream")
    with pytest.raises(FetchRefused, match="Content-Type application/octet-stream"):
        await fetcher.get(url)


async def test_body_over_the_byte_limit_is_refused(fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/f/huge.txt", b"a" * (128 * 1024), "text/plain")
    with pytest.raises(FetchRefused, match="byte limit"):
        await fetcher.get(url)


async def test_slow_origin_times_out(fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/f/slow", "late", "text/plain", delay_s=1.5)
    with pytest.raises(FetchFailed, match="timed out"):
        await fetcher.get(url)


async def test_every_redirect_is_checked_again(fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    http_fixture.serve("/f/final", "landed", "text/plain")
    ok = http_fixture.serve("/f/hop", "", status=302, headers={"location": "/f/final"})
    assert (await fetcher.get(ok)).body == b"landed"
    bad = http_fixture.serve("/f/to-metadata", "", status=302,
                             headers={"location": "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(FetchRefused, match=r"169\.254\.169\.254"):
        await fetcher.get(bad)
    loop = http_fixture.serve("/f/loop", "", status=302, headers={"location": "/f/loop"})
    with pytest.raises(FetchRefused, match="redirects"):
        await fetcher.get(loop)


async def test_robots_txt_is_respected_on_the_clearnet(fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/private/secret.html", "no")
    with pytest.raises(FetchRefused, match=r"robots\.txt"):
        await fetcher.get(url)
    assert "/private/secret.html" not in [path for _, path, _ in http_fixture.requests]
    api = http_fixture.serve("/private/api.json", "{}", "application/json")
    assert (await fetcher.get(api, api=True)).body == b"{}"  # robots.txt is for crawlers, not API clients


async def test_per_domain_rate_limit_queues_requests(http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/f/rated", "ok", "text/plain")
    limited = Fetcher(FetchConfig(allow_ranges=["127.0.0.0/8"], per_domain_rate_per_s=10, tor_socks_url=""))
    try:
        began = time.monotonic()
        results = await asyncio.gather(*(limited.get(url) for _ in range(5)))
        elapsed = time.monotonic() - began
    finally:
        await limited.close()
    assert all(r.status == 200 for r in results)  # queued, none failed
    assert elapsed >= 0.4  # robots.txt + 5 requests at 10/s


async def test_onion_and_opsec_need_tor(fetcher: Fetcher) -> None:
    with pytest.raises(FetchRefused, match="no Tor proxy"):
        await fetcher.get("http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion/")
    with pytest.raises(FetchRefused, match="no Tor proxy"):
        await fetcher.get("http://127.0.0.1/", opsec=True, investigation_id="inv-x")
