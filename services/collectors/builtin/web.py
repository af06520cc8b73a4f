"""Web pages: the main text (trafilatura), outbound links and the indicators in the text.

Every request goes through the guarded fetcher (SSRF guard, limits, robots.txt, Tor for .onion
and OPSEC investigations). The `tor` collector is the same collector restricted to Tor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urldefrag, urljoin

import lxml.html
import trafilatura

from services.collectors.contract import CollectContext, Document, Finding
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable, Relation, from_indicator
from services.collectors.settings import CollectorsConfig

HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_LINKS = 200  # outbound links recorded per page


class WebCollector:
    name = "web"
    description = "Fetches a web page (clearnet, or .onion through Tor): main text, outbound links, indicators"
    consumes = frozenset({"url"})
    produces = frozenset({"url", "domain-name", "ipv4-addr", "ipv6-addr", "email-addr", "file", "vulnerability",
                          "x-crypto-address"})
    rate_limit_per_s = 10.0  # the fetcher also limits per domain
    default_confidence = 70
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        page = await ctx.fetcher.get(target.value, investigation_id=ctx.investigation_id,
                                     opsec=ctx.opsec or self.needs_tor, accept=[*HTML_TYPES, "text/plain"])
        html = page.body.decode("utf-8", "replace")
        if page.content_type in HTML_TYPES:
            text = trafilatura.extract(html, url=page.url, include_comments=False) or ""
            title = _title(html)
            links = _links(html, page.url)
        else:
            text, title, links = html, "", []
        document = Document(page.body, page.content_type, page.url, title)
        page_obs = Observable("url", page.url, {"title": title} if title else {})
        yield Finding(page_obs, page.url, document=document)
        if page.url != target.value:  # redirected: the asked URL leads to the final one
            yield Finding(target, page.url, (Relation(target, page_obs, "redirects-to", 90),))
        for link in links[:MAX_LINKS]:
            linked = Observable("url", link)
            yield Finding(linked, page.url, (Relation(page_obs, linked, "links-to", 80),))
        for indicator in extract_indicators(text + "\n" + title):
            if indicator.type == "url" and indicator.value in links:
                continue
            found = from_indicator(indicator.type, indicator.value)
            yield Finding(found, page.url, (Relation(page_obs, found, "related-to", 60),))


class TorCollector(WebCollector):
    name = "tor"
    description = "Fetches a Tor hidden service (or any page) only through Tor, with per-investigation isolation"
    needs_tor = True


def _title(html: str) -> str:
    try:
        titles = lxml.html.fromstring(html).xpath("//title/text()")
    except (lxml.etree.ParserError, ValueError):
        return ""
    return str(titles[0]).strip() if titles else ""


def _links(html: str, base: str) -> list[str]:
    try:
        hrefs = lxml.html.fromstring(html).xpath("//a/@href")
    except (lxml.etree.ParserError, ValueError):
        return []
    out: dict[str, None] = {}
    for href in hrefs:
        absolute = urldefrag(urljoin(base, str(href).strip()))[0]
        if absolute.startswith(("http://", "https://")):
            out[absolute] = None
    return list(out)



