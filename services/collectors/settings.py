from pydantic import BaseModel

from bev.settings import BevSettings


class CollectorsConfig(BaseModel):
    max_extract_bytes: int = 2 * 1024 * 1024  # text larger than this is refused, not truncated


class Settings(BevSettings):
    collectors: CollectorsConfig = CollectorsConfig()
