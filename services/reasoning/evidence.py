"""Long inputs, cut down deterministically before a model reads them.

Documents are split into sentences with their character offsets, grouped into chunks at sentence
boundaries, and every sentence is scored by indicator density (IPs, domains, hashes, CVEs, ATT&CK
ids, ...) plus the question's terms. Only the best chunks, and in them only the best sentences,
reach the model, so a 100K-token input costs a few bounded model calls; every sentence keeps its
document, chunk and offsets, so `text[start:end] == quote` holds for every claim by construction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A sentence: from a non-space up to . ! ? followed by whitespace (so "evil.ru" does not end one),
# a line break, or the end of the text.
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s|\Z)|(?=\n)|\Z)", re.S)
_INDICATORS = [
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),                                   # IPv4
    re.compile(r"\b(?:[a-z0-9-]+(?:\.|\[\.\]))+(?:com|net|org|ru|cn|io|xyz|top|info|biz|onion|su|cc)\b", re.I),
    re.compile(r"\bh(?:tt|xx)ps?://\S+", re.I),                                   # URL, defanged too
    re.compile(r"\b[a-f0-9]{32}\b|\b[a-f0-9]{40}\b|\b[a-f0-9]{64}\b", re.I),       # MD5/SHA-1/SHA-256
    re.compile(r"\bCVE-\d{4}-\d{4,7}\b", re.I),
    re.compile(r"\bT1\d{3}(?:\.\d{3})?\b"),                                       # ATT&CK technique
    re.compile(r"\b(?:APT|TA|FIN|UNC)\d{1,4}\b"),                                 # tracked groups
    re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b"),                                   # e-mail
    re.compile(r"\b(?:bc1|[13])[a-km-zA-HJ-NP-Z1-9]{25,39}\b"),                    # Bitcoin address
]
_THREAT_TERMS = re.compile(
    r"\b(?:malware|ransomware|phishing|exploit\w*|backdoor|beacon\w*|c2|command[- ]and[- ]control|"
    r"exfiltrat\w*|lateral|credential\w*|loader|dropper|implant|botnet|attribut\w*|campaign|actor)\b",
    re.I,
)
_WORD = re.compile(r"[a-z0-9][a-z0-9-]{3,}")
_STOPWORDS = frozenset(
    "this that with from what which when where have been were does about into their there these those "
    "they them then than will would could should also more most some such only other over under".split()
)


@dataclass(frozen=True)
class Sentence:
    document: int  # index into the request's documents
    chunk: int     # chunk index within its document
    start: int     # character offsets into the document's text
    end: int
    score: float


@dataclass(frozen=True)
class Chunk:
    document: int
    index: int
    start: int
    end: int
    sentences: tuple[Sentence, ...]

    @property
    def score(self) -> float:
        """Its best sentence, plus a little for the next two: one strong indicator outranks a chunk of
        mildly on-topic boilerplate."""
        best = sorted((s.score for s in self.sentences), reverse=True)[:3]
        return best[0] + 0.25 * sum(best[1:]) if best else 0.0


def question_terms(question: str) -> frozenset[str]:
    return frozenset(word for word in _WORD.findall(question.lower()) if word not in _STOPWORDS)


def score_sentence(text: str, terms: dict[str, float]) -> float:
    """Indicators count most; question terms count by their rarity in the input (see term_weights)."""
    indicators = sum(len(pattern.findall(text)) for pattern in _INDICATORS)
    threat = len(_THREAT_TERMS.findall(text))
    overlap = sum(terms.get(word, 0.0) for word in set(_WORD.findall(text.lower())))
    return 2.0 * indicators + 1.0 * threat + overlap


def term_weights(terms: frozenset[str], texts: list[str], max_sentence_chars: int) -> dict[str, float]:
    """Inverse sentence frequency of each question term over the whole input (a term that appears in
    every boilerplate line says nothing): log(N / (1 + df)), clipped at 0."""
    if not terms:
        return {}
    counts = dict.fromkeys(terms, 0)
    total = 0
    for text in texts:
        for start, end in split_sentences(text, max_sentence_chars):
            total += 1
            for word in terms.intersection(_WORD.findall(text[start:end].lower())):
                counts[word] += 1
    return {word: max(0.0, math.log(total / (1 + count))) / 2 for word, count in counts.items()}


def split_sentences(text: str, max_chars: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence; a longer sentence is cut to its first `max_chars` characters."""
    spans = []
    for match in _SENTENCE.finditer(text):
        start, end = match.start(), match.end()
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, min(end, start + max_chars)))
    return spans


def chunk_document(document: int, text: str, terms: dict[str, float], chunk_chars: int,
                   max_sentence_chars: int) -> list[Chunk]:
    """Chunks of at most ~chunk_chars at sentence boundaries, each sentence scored."""
    chunks: list[Chunk] = []
    current: list[Sentence] = []
    chunk_start = 0

    def close(end: int) -> None:
        chunks.append(Chunk(document, len(chunks), chunk_start, end, tuple(current)))

    for start, end in split_sentences(text, max_sentence_chars):
        if current and end - chunk_start > chunk_chars:
            close(current[-1].end)
            current = []
            chunk_start = start
        current.append(Sentence(document, len(chunks), start, end, score_sentence(text[start:end], terms)))
    if current:
        close(current[-1].end)
    return chunks


def select(chunks: list[Chunk], texts: list[str], calls: int, per_call: int,
           min_score: float) -> list[list[Sentence]]:
    """The input's best sentences (score >= min_score), at most calls * per_call, in batches of
    per_call for the model's map step; each batch in text order, so nearby sentences read together.

    Repeated sentences (boilerplate, mirrored pages) are read once: the first occurrence wins.
    """
    seen: set[str] = set()
    ranked = sorted((s for c in chunks for s in c.sentences if s.score >= min_score),
                    key=lambda s: (-s.score, s.document, s.start))
    best: list[Sentence] = []
    for sentence in ranked:
        key = " ".join(texts[sentence.document][sentence.start:sentence.end].lower().split())
        if key in seen:
            continue
        seen.add(key)
        best.append(sentence)
        if len(best) == calls * per_call:
            break
    best.sort(key=lambda s: (s.document, s.start))
    return [best[index:index + per_call] for index in range(0, len(best), per_call)]
