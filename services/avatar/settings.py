from typing import Literal

from pydantic import BaseModel, Field

from bev.settings import BevSettings


class AvatarConfig(BaseModel):
    # How a new investigation's avatar narrates until SetPersonality changes it.
    personality: Literal["analyst", "mentor", "red-teamer"] = "analyst"
    # Investigations whose state is kept in memory; the least recently used is dropped first (an
    # investigation being streamed is kept).
    max_investigations: int = Field(default=1000, ge=1)
    # Emotions fade by half in this time after the event that raised them.
    half_life_s: float = Field(default=30.0, gt=0)
    # With no event for this long, the avatar goes back to idle.
    idle_after_s: float = Field(default=120.0, gt=0)
    # While emotions fade, StreamState sends the state again this often (only when it visibly changed).
    stream_refresh_s: float = Field(default=5.0, gt=0)
    # ... and at least this often even when nothing changed, so that a caller can tell a quiet
    # investigation from a replica that went away (the gateway reopens a stream silent for 75 s).
    stream_keepalive_s: float = Field(default=30.0, gt=0)
    # How long the swarm's "this caller may see this investigation" is trusted before it is asked again.
    access_cache_s: float = Field(default=10.0, ge=0)


class Settings(BevSettings):
    avatar: AvatarConfig = AvatarConfig()
