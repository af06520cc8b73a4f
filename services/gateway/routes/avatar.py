from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import ConfigDict, Field

from bev.avatar.v1 import avatar_pb2
from services.gateway.deps import WRITE, ClientsDep
from services.gateway.routes.common import Body, enum_value, labels, to_json

STATES = [name.removeprefix("RESEARCH_STATE_").lower() for name in avatar_pb2.ResearchState.keys()
          if name != "RESEARCH_STATE_UNSPECIFIED"]
PERSONALITIES = ["calm", "balanced", "enthusiastic"]  # the avatar service's (services/avatar/expressions.py)

router = APIRouter(tags=["avatar"])


class AvatarStateBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"session_id": "inv-7d2f", "state": "collecting", "progress": 0.2, "personality": "calm"}]})

    session_id: str = Field(min_length=1)
    state: str = Field(description=f"{', '.join(STATES)} (any case)", json_schema_extra=labels(*STATES))
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    severity: float | None = Field(default=None, ge=0.0, le=1.0)
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    personality: str = Field(default="", description="calm, balanced, enthusiastic; empty: the service's default "
                                                     "(a session keeps the one it started with)",
                             json_schema_extra=labels("", *PERSONALITIES))


@router.post("/api/v1/avatar/state", dependencies=[WRITE], responses={
    409: {"description": "Not a transition from the session's current state (idle -> reporting)"}})
async def avatar_state(body: AvatarStateBody, clients: ClientsDep) -> dict[str, Any]:
    """Move a session's avatar to a research state; the answer is the expression to show."""
    state = enum_value(avatar_pb2.ResearchState, "RESEARCH_STATE_", body.state, "state")
    # Checked here too: the service reads the personality only when a session starts, so a bad one
    # for an existing session would pass unnoticed.
    if body.personality and body.personality.lower() not in PERSONALITIES:
        raise HTTPException(400, f"unknown personality {body.personality!r}; one of {', '.join(PERSONALITIES)}")
    request = avatar_pb2.MapStateRequest(session_id=body.session_id, state=state,
                                          personality=body.personality.lower())
    for name in ("confidence", "severity", "progress"):
        value = getattr(body, name)
        if value is not None:
            setattr(request, name, value)
    return to_json(await clients.avatar.MapState(request))
