"""Embeddings: MiniLM (sentence-transformers) in-process; batching and the corpus grow here (issue C2)."""

from __future__ import annotations

import asyncio

from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsServicer
from bev.rpc import CallContext, RpcError, StatusCode
from bev.runtime import ServiceRuntime
from services.embeddings.model import SentenceEmbedder
from services.embeddings.settings import Settings


class Embeddings(EmbeddingsServicer):
    def __init__(self, runtime: ServiceRuntime[Settings], embedder: SentenceEmbedder) -> None:
        super().__init__(runtime.info)
        self.config = runtime.settings.embeddings
        self.embedder = embedder
        # torch runs one forward pass at a time well on 2 cores; queue the rest.
        self._model_lock = asyncio.Lock()

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        return [common_pb2.HealthCheck(name="model", ok=True, detail=f"{self.embedder.name} on {self.embedder.device}")]

    async def Embed(self, request: embeddings_pb2.EmbedRequest, ctx: CallContext) -> embeddings_pb2.EmbedResponse:
        if request.model and request.model != self.embedder.name:
            raise RpcError(StatusCode.NOT_FOUND, f"unknown model {request.model!r}; this instance serves {self.embedder.name}")
        if not request.texts:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "texts is empty")
        if len(request.texts) > self.config.max_texts:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"{len(request.texts)} texts; at most {self.config.max_texts} per call")
        texts = list(request.texts)
        async with self._model_lock:
            vectors = await asyncio.to_thread(self.embedder.encode, texts, self.config.batch_size)
            tokens = await asyncio.to_thread(self.embedder.count_tokens, texts)
        return embeddings_pb2.EmbedResponse(
            model=self.embedder.name,
            dimensions=self.embedder.dimensions,
            vectors=[embeddings_pb2.Vector(values=row.tolist()) for row in vectors],
            total_tokens=tokens,
        )

    async def ListModels(self, request: embeddings_pb2.ListModelsRequest, ctx: CallContext) -> embeddings_pb2.ListModelsResponse:
        e = self.embedder
        return embeddings_pb2.ListModelsResponse(
            models=[embeddings_pb2.EmbeddingModel(name=e.name, dimensions=e.dimensions, max_tokens=e.max_tokens, device=e.device)]
        )


async def build(runtime: ServiceRuntime[Settings]) -> Embeddings:
    config = runtime.settings.embeddings
    embedder = await asyncio.to_thread(SentenceEmbedder.load, config.model, config.device or None)
    return Embeddings(runtime, embedder)
