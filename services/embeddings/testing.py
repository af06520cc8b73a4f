"""Pytest fixtures for the embeddings service (registered in the repository's conftest.py): the real
MiniLM model, loaded once per session from its packaged weights."""

from __future__ import annotations

import pytest

from services.embeddings.model import SentenceEmbedder

__all__ = ["minilm"]


@pytest.fixture(scope="session")
def minilm() -> SentenceEmbedder:
    """all-MiniLM-L6-v2 from its packaged weights (offline), on CUDA when present."""
    return SentenceEmbedder.load()
