"""RSS and Atom feeds (feedparser): each entry's link, and the indicators in its title and summary."""

from __future__ import annotations

from collections.abc import AsyncIterator

import feedparser

from services.collectors.contract import CollectContext, CollectorError, Finding
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable, Relation, from_indicator
from services.collectors.settings import CollectorsConfig

FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/xml", "text/xml")


class FeedCollector:
    name = "feed"
    description = "Reads an RSS/Atom feed: entry links and the indicators in titles and summaries"
    consumes = frozenset({"url"})
    produces = frozenset({"url", "domain-name", "ipv4-addr", "ipv6-addr", "email-addr", "file", "vulnerability",
                          "x-crypto-address"})
    rate_limit_per_s = 2.0
    default_confidence = 60
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        fetched = await ctx.fetcher.get(target.value, investigation_id=ctx.investigation_id, opsec=ctx.opsec,
                                        accept=FEED_TYPES)
        parsed = feedparser.parse(fetched.body)
        if parsed.bozo and not parsed.entries:
            raise CollectorError(f"{target.value}: not a readable feed ({parsed.bozo_exception})")
        feed = Observable("url", fetched.url, {"title": str(parsed.feed.get("title", ""))})
        yield Finding(feed, fetched.url)
        for entry in parsed.entries:
            link = str(entry.get("link", "")).strip()
            text = f"{entry.get('title', '')}\n{entry.get('summary', '')}"
            parent = feed
            if link.startswith(("http://", "https://")):
                parent = Observable("url", link, {"title": str(entry.get("title", ""))})
                yield Finding(parent, fetched.url, (Relation(feed, parent, "links-to", 80),))
            for indicator in extract_indicators(text):
                if indicator.type == "url" and indicator.value == link:
                    continue
                found = from_indicator(indicator.type, indicator.value)
                yield Finding(found, link or fetched.url, (Relation(parent, found, "related-to", 60),))
