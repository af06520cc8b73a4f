"""Which document formats the corpus reads, shared by the gateway (415 before upload) and the
embeddings service (which parses them): one table, so the two cannot disagree."""

from __future__ import annotations

from pathlib import PurePosixPath

TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
STIX = "application/stix+json"
SUPPORTED_MEDIA_TYPES = (TEXT, MARKDOWN, HTML, PDF, STIX)

BY_EXTENSION = {
    ".txt": TEXT,
    ".text": TEXT,
    ".log": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
    ".json": STIX,  # JSON is read only as a STIX 2.1 bundle
    ".stix": STIX,
}
_ALIASES = {"application/json": STIX, "text/x-markdown": MARKDOWN, "application/xhtml+xml": HTML}
# Declared by clients that do not know the type; then the filename or the content decides.
_UNKNOWN = {"", "application/octet-stream", "binary/octet-stream"}


class UnsupportedMediaType(ValueError):
    """Not a format the corpus reads."""


def resolve_media_type(media_type: str, filename: str, content: bytes) -> str:
    """The declared type (parameters dropped), else the filename's extension, else sniffed."""
    declared = media_type.split(";", 1)[0].strip().lower()
    if declared not in _UNKNOWN:
        declared = _ALIASES.get(declared, declared)
        if declared not in SUPPORTED_MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"unsupported media type {declared!r}; supported: {', '.join(SUPPORTED_MEDIA_TYPES)}"
            )
        return declared
    suffix = PurePosixPath(filename).suffix.lower() if filename else ""
    if suffix in BY_EXTENSION:
        return BY_EXTENSION[suffix]
    if suffix:
        raise UnsupportedMediaType(
            f"unsupported file type {suffix!r} ({filename}); supported: {', '.join(sorted(BY_EXTENSION))}"
        )
    return _sniff(content)


def _sniff(content: bytes) -> str:
    head = content[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return PDF
    if head[:256].lower().startswith((b"<!doctype html", b"<html")):
        return HTML
    if head.startswith(b"{") and b'"bundle"' in content[:4096]:
        return STIX
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedMediaType("binary content of unknown type; give a media type or a filename") from None
    return TEXT
