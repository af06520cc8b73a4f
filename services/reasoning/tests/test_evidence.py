"""Pre-selection for long inputs: sentence offsets are exact, chunks cover the text, selection is deterministic."""

from __future__ import annotations

from services.reasoning.evidence import (
    chunk_document,
    question_terms,
    score_sentence,
    select,
    split_sentences,
    term_weights,
)

TEXT = ("Routine update on the rota. The loader beaconed to 203.0.113.45 from evil-updates.ru every minute.\n"
        "Another routine note. Version 1.2 of the tool was seen.   Exfiltration to 198.51.100.23 followed (T1567)!")


def test_sentences_have_exact_offsets() -> None:
    spans = split_sentences(TEXT, 500)
    sentences = [TEXT[start:end] for start, end in spans]
    assert sentences == [
        "Routine update on the rota.",
        "The loader beaconed to 203.0.113.45 from evil-updates.ru every minute.",  # dots inside do not split
        "Another routine note.",
        "Version 1.2 of the tool was seen.",
        "Exfiltration to 198.51.100.23 followed (T1567)!",
    ]
    start, end = split_sentences("x" * 50 + ".", 20)[0]
    assert (start, end) == (0, 20)  # long sentences are cut, never moved


def test_indicators_outscore_boilerplate_and_rare_terms_count_more() -> None:
    texts = [TEXT]
    weights = term_weights(question_terms("Where did the loader send the routine data?"), texts, 500)
    assert weights["loader"] > weights["routine"]  # "routine" is in two of five sentences
    scores = [score_sentence(TEXT[s:e], weights) for s, e in split_sentences(TEXT, 500)]
    assert scores[1] == max(scores) and scores[4] > scores[0] and scores[4] > scores[2]


def test_chunks_cover_the_text_in_order_and_selection_is_deterministic() -> None:
    text = " ".join(f"Note {i} about the rota." if i % 7 else f"Beacon {i} to 203.0.113.{i % 250}." for i in range(400))
    weights = term_weights(question_terms("beacon"), [text], 280)
    chunks = chunk_document(0, text, weights, 500, 280)
    assert len(chunks) > 10
    assert all(c.end - c.start <= 500 for c in chunks)
    assert [s for c in chunks for s in c.sentences] == sorted((s for c in chunks for s in c.sentences),
                                                                key=lambda s: s.start)
    assert all(c.start <= s.start and s.end <= c.end and s.chunk == c.index for c in chunks for s in c.sentences)
    batches = select(chunks, [text], calls=2, per_call=5, min_score=2.0)
    assert [len(b) for b in batches] == [5, 5]
    assert all(text[s.start:s.end].startswith("Beacon") for b in batches for s in b)
    assert select(chunks, [text], calls=2, per_call=5, min_score=2.0) == batches
    assert select(chunks, [text], calls=2, per_call=5, min_score=100.0) == []


def test_repeated_sentences_are_read_once() -> None:
    text = "Beacon to 203.0.113.9 seen. " * 20
    chunks = chunk_document(0, text, {}, 200, 280)
    batches = select(chunks, [text], calls=3, per_call=4, min_score=1.0)
    assert [len(b) for b in batches] == [1]
