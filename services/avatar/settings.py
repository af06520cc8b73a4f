from pydantic import BaseModel

from bev.settings import BevSettings


class AvatarConfig(BaseModel):
    personality: str = "balanced"  # calm, balanced, enthusiastic
    max_sessions: int = 10_000     # state machines kept in memory, oldest dropped first


class Settings(BevSettings):
    avatar: AvatarConfig = AvatarConfig()
