"""Documents (reports as PDF, plain text, Markdown, HTML) fetched by URL and handed, whole, to the
embeddings corpus, which extracts and chunks them. Indicators are read from text formats here."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.collectors.contract import CollectContext, Document, Finding
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable, Relation, from_indicator
from services.collectors.settings import CollectorsConfig

DOCUMENT_TYPES = ("application/pdf", "text/plain", "text/markdown", "text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown")


class DocumentCollector:
    name = "document"
    description = "Fetches a document (PDF, text, Markdown, HTML) for the embeddings corpus; indicators from text"
    consumes = frozenset({"url"})
    produces = frozenset({"url", "domain-name", "ipv4-addr", "ipv6-addr", "email-addr", "file", "vulnerability",
                          "x-crypto-address"})
    rate_limit_per_s = 5.0
    default_confidence = 70
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        fetched = await ctx.fetcher.get(target.value, investigation_id=ctx.investigation_id, opsec=ctx.opsec,
                                        accept=DOCUMENT_TYPES)
        filename = fetched.url.rstrip("/").rsplit("/", 1)[-1]
        document = Document(fetched.body, fetched.content_type, fetched.url, filename)
        source = Observable("url", fetched.url, {"media_type": fetched.content_type})
        yield Finding(source, fetched.url, document=document)
        if fetched.content_type in TEXT_TYPES:
            for indicator in extract_indicators(fetched.body.decode("utf-8", "replace")):
                found = from_indicator(indicator.type, indicator.value)
                yield Finding(found, fetched.url, (Relation(source, found, "related-to", 60),))
