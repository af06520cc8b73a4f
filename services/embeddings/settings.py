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
    # Asynchronous ingest (SubmitIngest): jobs live in PostgreSQL (corpus.ingest_jobs). Each
    # instance runs ingest_workers workers; they share the model, so more workers interleave jobs
    # (a small upload is not stuck behind a large one) rather than adding speed. A worker holds a
    # job under a lease of ingest_lease_s it renews every third of that; a job whose worker died
    # is taken again once the lease runs out, at most ingest_max_attempts times in all. Idle
    # workers look for jobs every ingest_poll_s (at once on this instance's own submissions).
    # Finished jobs are deleted ingest_job_retention_h hours after they end.
    ingest_workers: int = Field(default=2, ge=0)
    ingest_lease_s: float = Field(default=60.0, ge=1)
    ingest_poll_s: float = Field(default=1.0, gt=0)
    ingest_max_attempts: int = Field(default=3, ge=1)
    ingest_retry_delay_s: float = Field(default=10.0, ge=0)
    ingest_job_retention_h: float = Field(default=168.0, gt=0)
    # Ingest embeds a document's chunks in windows of (depth + 1) model batches, shortest first
    # within a window (less padding), keeping up to depth batches queued at the model while a
    # window is stored, so the model never waits for PostgreSQL or the vector backend.
    ingest_pipeline_depth: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _overlap_below_half_a_chunk(self) -> "EmbeddingsConfig":
        # Chunks may end halfway through their window; a larger overlap would barely advance.
        if self.chunk_overlap * 2 > self.chunk_chars:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be at most half of chunk_chars ({self.chunk_chars})")
        return self


class Settings(BevSettings):
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
