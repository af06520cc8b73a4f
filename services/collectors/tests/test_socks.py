"""Tor routing proven through a real SOCKS5 server (Debian microsocks) instead of a Tor daemon.

microsocks binds its outgoing connections to 127.0.0.2, so the fixture origin can tell who
connected: a proxied request arrives from 127.0.0.2, a direct one from 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.collectors.fetch import Fetcher, FetchFailed
from services.collectors.settings import FetchConfig
from services.collectors.testing import HttpFixture, SocksProxy


@pytest.fixture
async def fetcher(socks_proxy: SocksProxy) -> AsyncIterator[Fetcher]:
    instance = Fetcher(FetchConfig(allow_ranges=["127.0.0.0/8"], per_domain_rate_per_s=1000,
                                   tor_socks_url=socks_proxy.url))
    yield instance
    await instance.close()


async def test_opsec_investigation_goes_only_through_the_proxy(
        fetcher: Fetcher, http_fixture: HttpFixture, socks_proxy: SocksProxy) -> None:
    url = http_fixture.serve("/socks/page.html", "<p>via proxy</p>")
    robots_before = len(http_fixture.peers("/robots.txt"))
    result = await fetcher.get(url, investigation_id="inv-a", opsec=True)
    assert result.via_tor and b"via proxy" in result.body
    assert http_fixture.peers("/socks/page.html") == [socks_proxy.outgoing_address]
    # robots.txt was read too, and through the proxy as well: no direct connection at all.
    assert http_fixture.peers("/robots.txt")[robots_before:] == [socks_proxy.outgoing_address]
    direct = await fetcher.get(http_fixture.serve("/socks/direct.html", "<p>direct</p>"), investigation_id="inv-a")
    assert not direct.via_tor and http_fixture.peers("/socks/direct.html") == ["127.0.0.1"]


async def test_each_investigation_uses_its_own_socks_credentials(
        fetcher: Fetcher, http_fixture: HttpFixture) -> None:
    url = http_fixture.serve("/socks/isolated.html", "<p>isolated</p>")
    assert (await fetcher.get(url, investigation_id="inv-a", opsec=True)).via_tor
    # The proxy knows only inv-a's credentials: inv-b's differ, so it refuses them.
    with pytest.raises(FetchFailed, match=r"through Tor|proxy"):
        await fetcher.get(url, investigation_id="inv-b", opsec=True)
    assert http_fixture.peers("/socks/isolated.html") == ["127.0.0.2"]
