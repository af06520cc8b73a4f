from pydantic import BaseModel

from bev.settings import BevSettings


class EmbeddingsConfig(BaseModel):
    model: str = "all-MiniLM-L6-v2"
    device: str = ""  # empty = cuda when present, else cpu
    batch_size: int = 32
    max_texts: int = 2048  # per Embed call


class Settings(BevSettings):
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
