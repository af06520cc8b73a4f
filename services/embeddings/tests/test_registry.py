"""The model registry: the packaged MiniLM by default, another sentence-transformers model by
configuration (a local directory), each with its own batcher; bad configuration fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.embeddings.model import MODEL_PATHS, SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.settings import EmbeddingsConfig, ModelConfig, Settings


@pytest.mark.slow
async def test_a_second_model_from_configuration(minilm: SentenceEmbedder, tmp_path: Path) -> None:
    local_copy = MODEL_PATHS["all-MiniLM-L6-v2"]()  # any sentence-transformers directory will do
    config = EmbeddingsConfig(models=[ModelConfig(name="minilm-local", path=str(local_copy))])
    registry = ModelRegistry.load(config)
    try:
        assert [m.name for m in registry] == ["all-MiniLM-L6-v2", "minilm-local"]
        assert registry.get("").name == "all-MiniLM-L6-v2"
        other = registry.get("minilm-local")
        assert (other.embedder.dimensions, other.embedder.max_tokens) == (384, 256)
        assert other.embedder.device.startswith(("cpu", "cuda"))
        assert other.batcher is not registry.default.batcher
        vectors = (await other.batcher.embed(["a configured model"])).vectors
        np.testing.assert_allclose(vectors, minilm.encode(["a configured model"]), atol=1e-5)
        with pytest.raises(KeyError, match="serves all-MiniLM-L6-v2, minilm-local"):
            registry.get("bge-large")
    finally:
        await registry.close()


def test_bad_model_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="configured twice"):
        ModelRegistry.configured(EmbeddingsConfig(models=[ModelConfig(name="all-MiniLM-L6-v2", path="/x")]))
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers directory"):
        ModelRegistry.load(EmbeddingsConfig(models=[ModelConfig(name="empty", path=str(tmp_path))]))


def test_models_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEV_EMBEDDINGS__MODELS", '[{"name": "bge-small", "path": "/models/bge-small", "device": "cuda"}]')
    monkeypatch.setenv("BEV_EMBEDDINGS__VECTOR_BACKEND", "qdrant")
    config = Settings().embeddings
    assert config.models == [ModelConfig(name="bge-small", path="/models/bge-small", device="cuda")]
    assert config.vector_backend == "qdrant"
    monkeypatch.setenv("BEV_EMBEDDINGS__CHUNK_OVERLAP", "700")
    with pytest.raises(ValueError, match="chunk_overlap"):
        Settings()
