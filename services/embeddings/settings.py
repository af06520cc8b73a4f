from typing import Literal

from pydantic import BaseModel, Field, model_validator

from bev.settings import BevSettings


class ModelConfig(BaseModel):
    """One more sentence-transformers model, by configuration (weights in a local directory)."""

    name: str = Field(min_length=1)
    path: str = ""  # local directory of a sentence-transformers model; empty = a packaged model
    device: str = ""  # empty = the section's device


class EmbeddingsConfig(BaseModel):
    model: str = "all-MiniLM-L6-v2"  # the default model: Embed without a model, and the corpus
    # More models, e.g. BEV_EMBEDDINGS__MODELS='[{"name": "bge-small", "path": "/models/bge-small"}]'
    models: list[ModelConfig] = []
    device: str = ""  # empty = cuda when present, else cpu
    # Micro-batching: concurrent Embed calls share one forward pass of up to batch_size texts; the
    # first caller waits at most max_wait_ms for company. Texts queued beyond max_queue are refused.
    batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)
    max_queue: int = Field(default=4096, ge=1)
    max_texts: int = Field(default=2048, ge=1)  # per Embed call
    # Chunking, in characters (MiniLM reads 256 tokens, about 1000 characters of English).
    chunk_chars: int = Field(default=800, ge=100)
    chunk_overlap: int = Field(default=160, ge=0)
    max_document_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    # Where vectors live; documents, chunks and full text are always in PostgreSQL.
    vector_backend: Literal["pgvector", "qdrant", "weaviate"] = "pgvector"
    qdrant_url: str = ""  # empty = qdrant-client's local mode under <data_dir>/qdrant
    weaviate_url: str = "http://127.0.0.1:8080"
    weaviate_grpc_port: int = 50051
    # pgvector's hnsw.ef_search: recall vs speed (bench: 0.998 recall@10 at 100k, ~27x an exact scan)
    hnsw_ef_search: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _overlap_below_half_a_chunk(self) -> "EmbeddingsConfig":
        # Chunks may end halfway through their window; a larger overlap would barely advance.
        if self.chunk_overlap * 2 > self.chunk_chars:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be at most half of chunk_chars ({self.chunk_chars})")
        return self


class Settings(BevSettings):
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
