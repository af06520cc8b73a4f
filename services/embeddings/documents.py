"""Document bytes -> (title, normalised text): text, Markdown, HTML, PDF and STIX 2.1 bundles.

The normalised text is what the corpus stores and what chunk offsets index, so a citation
(document id, start, end) resolves to exactly the text that was embedded. Extraction is
blocking CPU work (lxml, pypdf): callers run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from bev.media_types import MARKDOWN, UnsupportedMediaType, resolve_media_type

__all__ = ["Extracted", "UnreadableDocument", "UnsupportedMediaType", "content_hash", "extract", "normalise"]


class UnreadableDocument(ValueError):
    """A supported format whose content could not be read or has no text."""


@dataclass(frozen=True)
class Extracted:
    media_type: str
    title: str
    text: str  # normalised

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def extract(content: bytes, media_type: str = "", filename: str = "", title: str = "") -> Extracted:
    """Read ``content`` as its media type and normalise the text; raises UnsupportedMediaType or
    UnreadableDocument with a message fit for the caller."""
    resolved = resolve_media_type(media_type, filename, content)
    match resolved:
        case "text/plain" | "text/markdown":
            raw = _decode(content)
            found_title = _first_heading(raw) if resolved == MARKDOWN else ""
            text = normalise(raw)
        case "text/html":
            found_title, text = _html(content)
        case "application/pdf":
            found_title, text = _pdf(content)
        case _:
            found_title, text = _stix(content)
    if not text:
        raise UnreadableDocument(f"no text in this {resolved} document")
    final_title = title.strip() or found_title.strip() or _first_line(text) or (filename or "untitled")
    return Extracted(resolved, final_title[:300], text)


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnreadableDocument("text is not valid UTF-8") from None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_TRAILING = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """NFC, one kind of newline, no control characters, runs of spaces collapsed, at most one
    blank line in a row, no surrounding whitespace. Same input, same hash: this is what dedup sees."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def _first_heading(markdown: str) -> str:
    match = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.MULTILINE)
    return match.group(1) if match else ""


def _first_line(text: str) -> str:
    line = text.split("\n", 1)[0]
    return line[:120]


def _html(content: bytes) -> tuple[str, str]:
    import trafilatura

    document = trafilatura.bare_extraction(
        content, with_metadata=True, include_comments=False, include_tables=True, favor_recall=True
    )
    if document is None:
        raise UnreadableDocument("no main text found in this HTML page")
    fields = document if isinstance(document, dict) else {"title": document.title, "text": document.text}
    return str(fields.get("title") or ""), normalise(str(fields.get("text") or ""))


def _pdf(content: bytes) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            raise UnreadableDocument("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str(reader.metadata.title) if reader.metadata and reader.metadata.title else ""
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, UnreadableDocument):
            raise
        raise UnreadableDocument(f"cannot read the PDF: {exc}") from None
    return title, normalise("\n\n".join(pages))


def _stix(content: bytes) -> tuple[str, str]:
    """A STIX 2.1 bundle's text is its objects' names and descriptions, one paragraph each."""
    try:
        bundle: Any = json.loads(_decode(content))
    except json.JSONDecodeError as exc:
        raise UnreadableDocument(f"not JSON: {exc}") from None
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle" or not isinstance(bundle.get("objects"), list):
        raise UnreadableDocument("JSON is read only as a STIX 2.1 bundle (type 'bundle' with a list of objects)")
    paragraphs = []
    title = ""
    for obj in bundle["objects"]:
        if not isinstance(obj, dict):
            continue
        description = obj.get("description")
        name = obj.get("name")
        if obj.get("type") == "report" and isinstance(name, str) and not title:
            title = name
        if isinstance(description, str) and description.strip():
            heading = f"{name} ({obj.get('type', 'object')})" if isinstance(name, str) else str(obj.get("type", ""))
            paragraphs.append(f"{heading}\n{description.strip()}")
    return title or f"STIX bundle {bundle.get('id', '')}".strip(), normalise("\n\n".join(paragraphs))
