"""Real all-MiniLM-L6-v2 embeddings from the packaged weights (offline)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.embeddings.model import SentenceEmbedder

SENTENCES = [
    "The ransomware group encrypted the hospital's file servers.",
    "Hospital servers were locked by a ransomware attack.",
    "The recipe calls for two cups of flour and an egg.",
    "A phishing email delivered the malware loader.",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    started = time.perf_counter()
    loaded = SentenceEmbedder.load()
    print(f"\nMiniLM load: {time.perf_counter() - started:.2f} s on {loaded.device}")
    yield loaded


def test_metadata(embedder: SentenceEmbedder) -> None:
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dimensions == 384
    assert embedder.max_tokens == 256
    assert embedder.device.startswith(("cpu", "cuda"))


def test_shape_dtype_and_normalisation(embedder: SentenceEmbedder) -> None:
    vectors = embedder.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_similar_sentences_score_higher(embedder: SentenceEmbedder) -> None:
    vectors = embedder.encode(SENTENCES)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > 0.6
    assert similar > unrelated + 0.4


def test_deterministic_and_batch_invariant(embedder: SentenceEmbedder) -> None:
    first = embedder.encode(SENTENCES)
    np.testing.assert_array_equal(first, embedder.encode(SENTENCES))
    singles = np.vstack([embedder.encode([text]) for text in SENTENCES])
    np.testing.assert_allclose(first, singles, atol=1e-5)
    np.testing.assert_allclose(first, embedder.encode(SENTENCES, batch_size=1), atol=1e-5)


def test_count_tokens(embedder: SentenceEmbedder) -> None:
    assert embedder.count_tokens([]) == 0
    assert embedder.count_tokens(["hello world"]) == 4  # [CLS] hello world [SEP]
    assert embedder.count_tokens(["word " * 1000]) == embedder.max_tokens  # truncated


def test_unknown_model_and_bad_batch(embedder: SentenceEmbedder) -> None:
    with pytest.raises(KeyError, match="unknown embedding model"):
        SentenceEmbedder.load("no-such-model")
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode(["x"], batch_size=0)


def test_throughput_batch_32(embedder: SentenceEmbedder) -> None:
    texts = [f"{SENTENCES[i % len(SENTENCES)]} Observation number {i}." for i in range(256)]
    embedder.encode(texts[:32])  # warm-up
    started = time.perf_counter()
    vectors = embedder.encode(texts, batch_size=32)
    elapsed = time.perf_counter() - started
    print(f"\nMiniLM throughput: {len(texts) / elapsed:.0f} sentences/s at batch 32")
    assert vectors.shape == (256, 384)
