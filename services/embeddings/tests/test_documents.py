"""Extraction and normalisation of every supported format, and chunking with offsets."""

from __future__ import annotations

import itertools

import pytest

from services.embeddings.chunking import chunk_text
from services.embeddings.documents import UnreadableDocument, UnsupportedMediaType, extract, normalise
from services.embeddings.tests import samples


def test_plain_text_is_normalised() -> None:
    doc = extract(samples.TEXT.encode(), filename="sweep.txt")
    assert doc.media_type == "text/plain"
    assert doc.text == (
        "Indicator sweep, 14 March.\n\nThe phishing kit harvested Microsoft 365 credentials and relayed MFA "
        "tokens in real time.\nDomains rotated daily."
    )
    assert doc.title == "Indicator sweep, 14 March."


def test_normalisation_makes_equivalent_texts_hash_the_same() -> None:
    a = extract("caf\u00e9  report\r\n".encode(), media_type="text/plain")
    b = extract("cafe\u0301 report\n\n\n".encode(), media_type="text/plain")  # decomposed é
    assert a.text == b.text == "café report" and a.content_hash == b.content_hash
    assert normalise("a\x00b\u00a0 c") == "ab c"


def test_markdown_keeps_its_text_and_takes_the_first_heading_as_title() -> None:
    doc = extract(samples.MARKDOWN.encode(), filename="notes.md")
    assert doc.media_type == "text/markdown"
    assert doc.title == "Volt Typhoon field notes"
    assert "living-off-the-land" in doc.text and "SOHO routers" in doc.text


def test_html_main_text_without_boilerplate() -> None:
    doc = extract(samples.HTML.encode(), media_type="text/html; charset=utf-8")
    assert doc.media_type == "text/html"
    assert doc.title == "Sandworm strikes the grid again"
    assert "Industroyer" in doc.text and "IEC-104" in doc.text
    assert "Cookie settings" not in doc.text and "Subscribe now" not in doc.text


def test_pdf_text_from_every_page_and_its_title() -> None:
    doc = extract(samples.pdf(samples.PDF_PAGES, "Threat summary Q3"), filename="q3.pdf")
    assert doc.media_type == "application/pdf"
    assert doc.title == "Threat summary Q3"
    assert "trojanised trading apps" in doc.text and "cross-chain bridges" in doc.text
    assert doc.text.index("Lazarus") < doc.text.index("mixers")


def test_stix_bundle_descriptions_become_text() -> None:
    doc = extract(samples.stix_bundle(), filename="apt28.json")
    assert doc.media_type == "application/stix+json"
    assert doc.title == "APT28 credential phishing campaign"
    assert "APT28 (intrusion-set)\nAPT28 is a threat group attributed to Russia's GRU unit 26165." in doc.text
    assert "Telegram bot" in doc.text
    assert "Phishing domain" not in doc.text  # no description, nothing to read


def test_the_content_is_sniffed_when_nothing_is_declared() -> None:
    assert extract(samples.pdf(samples.PDF_PAGES, "t")).media_type == "application/pdf"
    assert extract(samples.HTML.encode()).media_type == "text/html"
    assert extract(samples.stix_bundle()).media_type == "application/stix+json"


def test_unsupported_and_unreadable_documents_are_refused_clearly() -> None:
    with pytest.raises(UnsupportedMediaType, match="image/png"):
        extract(b"\x89PNG...", media_type="image/png")
    with pytest.raises(UnsupportedMediaType, match=r"\.docx"):
        extract(b"PK\x03\x04", filename="report.docx")
    with pytest.raises(UnsupportedMediaType, match="binary"):
        extract(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(UnreadableDocument, match="STIX"):
        extract(b'{"hello": "world"}', media_type="application/json")
    with pytest.raises(UnreadableDocument, match="PDF"):
        extract(b"%PDF-1.4 truncated", media_type="application/pdf")
    with pytest.raises(UnreadableDocument, match="no text"):
        extract(b"  \n\t ", media_type="text/plain")
    with pytest.raises(UnreadableDocument, match="UTF-8"):
        extract(b"caf\xe9", media_type="text/plain")


def test_chunks_cover_the_text_with_overlap_and_exact_offsets() -> None:
    text = normalise(" ".join(f"Sentence {i} mentions indicator {i * 13 % 97}." for i in range(300)))
    chunks = chunk_text(text, size=400, overlap=80)
    assert len(chunks) > 10
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.start < previous.end, "consecutive chunks overlap"
        assert chunk.start > previous.start
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert len(chunk.text) <= 400 and chunk.text == chunk.text.strip()
        assert chunk.text.endswith(".") or chunk is chunks[-1]  # cut at sentence ends
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert [c.seq for c in chunks] == list(range(len(chunks)))


def test_chunking_edge_cases() -> None:
    assert chunk_text("short", 100, 10) == [chunk_text("short", 100, 10)[0]]
    assert chunk_text("short", 100, 10)[0].text == "short"
    long_word = "x" * 250
    chunks = chunk_text(long_word, 100, 20)  # no boundary at all: hard cuts, still progress
    assert "".join(c.text for c in chunks).startswith("x" * 100) and chunks[-1].end == 250
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("text", 10, 10)
