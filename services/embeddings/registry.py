"""The models this instance serves: name -> loaded model (dimensions, max tokens, device) + its batcher.

The default model is the packaged all-MiniLM-L6-v2; more sentence-transformers models come from
configuration (BEV_EMBEDDINGS__MODELS, each a name and a local directory), never from a hub.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.embeddings.batching import MicroBatcher, Vectors
from services.embeddings.metrics import QUEUE_DEPTH
from services.embeddings.model import SentenceEmbedder
from services.embeddings.settings import EmbeddingsConfig, ModelConfig


@dataclass
class ServedModel:
    embedder: SentenceEmbedder
    batcher: MicroBatcher

    @property
    def name(self) -> str:
        return self.embedder.name


class ModelRegistry:
    def __init__(self, models: list[ServedModel], default: str) -> None:
        self._models = {m.name: m for m in models}
        if default not in self._models:
            raise KeyError(f"default model {default!r} is not among the loaded models")
        self.default_name = default

    @staticmethod
    def configured(config: EmbeddingsConfig) -> list[ModelConfig]:
        """The default model first, then the extra ones; names must be unique."""
        specs = [ModelConfig(name=config.model), *config.models]
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"embedding models configured twice: {', '.join(duplicates)}")
        return specs

    @classmethod
    def load(cls, config: EmbeddingsConfig) -> ModelRegistry:
        """Load every configured model (blocking: run it in a worker thread)."""
        served = []
        for spec in cls.configured(config):
            embedder = SentenceEmbedder.load(
                spec.name, spec.device or config.device or None, path=Path(spec.path) if spec.path else None
            )
            served.append(cls.serve(embedder, config))
        return cls(served, config.model)

    @staticmethod
    def serve(embedder: SentenceEmbedder, config: EmbeddingsConfig) -> ServedModel:
        def encode(texts: list[str]) -> tuple[Vectors, list[int]]:
            return embedder.encode(texts, config.batch_size), embedder.token_counts(texts)

        batcher = MicroBatcher(
            encode, max_batch=config.batch_size, max_wait_s=config.max_wait_ms / 1000, max_queue=config.max_queue
        )
        QUEUE_DEPTH.watch(embedder.name, batcher)  # bev_embeddings_queue_depth{queue="batcher:<model>"}
        return ServedModel(embedder, batcher)

    @property
    def default(self) -> ServedModel:
        return self._models[self.default_name]

    def get(self, name: str) -> ServedModel:
        """The model called ``name`` ("" = the default); KeyError names the ones served."""
        if not name:
            return self.default
        if name not in self._models:
            raise KeyError(f"unknown model {name!r}; this instance serves {', '.join(sorted(self._models))}")
        return self._models[name]

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    async def close(self) -> None:
        for model in self._models.values():
            await model.batcher.close()
