"""Split normalised text into overlapping chunks that keep their character offsets.

Each chunk is exactly ``text[start:end]``, so a search hit cites a span of the stored document.
Chunks end at a paragraph, sentence or word boundary when one lies in the second half of the
window, and the next chunk starts ``overlap`` characters earlier (at a word start), so a fact
split across a boundary is whole in at least one chunk. Hand-written rather than a text-splitter
library because the available ones either drop offsets or pull in a framework (langchain-core).
"""

from __future__ import annotations

from dataclasses import dataclass

_BREAKS = ("\n\n", ". ", "! ", "? ", "\n", "; ", ", ", " ")


@dataclass(frozen=True)
class Chunk:
    seq: int
    start: int
    end: int
    text: str


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got size={size} overlap={overlap}")
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            end = _break_before(text, start, end)
        stop = end
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        chunks.append(Chunk(len(chunks), start, stop, text[start:stop]))
        if end >= len(text):
            break
        following = max(end - overlap, start + 1)
        # Start the next chunk at a word, not inside one (unless the word is longer than the overlap).
        word_start = following
        while word_start < end and not text[word_start - 1].isspace():
            word_start += 1
        start = _skip_space(text, word_start)
    return chunks


def _break_before(text: str, start: int, end: int) -> int:
    """The best boundary in the window's second half; the window's end if there is none."""
    floor = start + (end - start) // 2
    for separator in _BREAKS:
        at = text.rfind(separator, floor, end)
        if at != -1:
            return at + len(separator)
    return end


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at
