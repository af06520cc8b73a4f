"""The avatar over HTTP: an investigation's avatar state (GET, and a WebSocket that sends every
change), its personality (PUT), and speech with visemes for lip-sync (POST .../speak).

A state is JSON with lower-case labels: {"investigation_id", "state" ("alert_discovery"),
"expression" ("alarm", "neutral"), "intensity" (0..1), "emotions" ({"curiosity": 0.2, ...}, each 0..1),
"gaze" ({"x", "y"} in -1..1), "color" ("#d94f3d"), "narration", "cause" ({"kind", "event_id"}: the
event the narration is grounded in; both "" when idle), "personality" ("analyst", "mentor",
"red-teamer"), "seq" (+1 per change: an event, a personality, going idle), "updated_at" (ISO 8601
UTC: the moment the state is of)}. The WebSocket sends the current state first, then each change, and
the state again (same seq, later updated_at) while its emotions visibly fade and every 30 s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException, WebSocket
from pydantic import ConfigDict, Field

from bev.avatar.v1 import avatar_pb2
from bev.rpc import RpcError, StatusCode
from bev.telemetry import get_logger
from services.gateway.clients import Clients
from services.gateway.deps import (
    READ,
    WRITE,
    CallerDep,
    ClientsDep,
    accept_websocket,
    refuse_websocket,
    refused_without_read,
    serve_websocket,
)
from services.gateway.routes.common import HTTP_STATUS, Body, labels

log = get_logger(__name__)

router = APIRouter(tags=["avatar"])

MAX_TEXT = 400  # the avatar service's limit on one Speak
PERSONALITIES = {"analyst": avatar_pb2.PERSONALITY_ANALYST, "mentor": avatar_pb2.PERSONALITY_MENTOR,
                 "red-teamer": avatar_pb2.PERSONALITY_RED_TEAMER}
_PERSONALITY_LABEL = {value: label for label, value in PERSONALITIES.items()}
STATES = [name.removeprefix("RESEARCH_STATE_").lower() for name in avatar_pb2.ResearchState.keys()
          if name != "RESEARCH_STATE_UNSPECIFIED"]
# StreamState is reopened when its deadline passes or its replica goes; after this many tries in a
# row that each failed within REOPEN_FAST_S, the WebSocket reports the error.
REOPEN_CODES = frozenset({StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE})
REOPEN_TRIES = 3
REOPEN_FAST_S = 30.0
# The avatar sends the state at least every 30 s (AvatarConfig.stream_keepalive_s); a stream silent
# this long is from a replica that went away: reopen it.
STREAM_IDLE_S = 75.0

_PATH = "/api/v1/avatar/{investigation_id}"
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No investigation by that id"}}
STATE_EXAMPLE: dict[str, Any] = {
    "investigation_id": "5b0f3e8e-7c1d-4b7a-9a61-0e2f4c9d1a33", "state": "alert_discovery", "expression": "alarm",
    "intensity": 0.82, "emotions": {"curiosity": 0.2, "focus": 0.4, "alarm": 0.82, "joy": 0.0, "doubt": 0.1,
                                    "worry": 0.3, "distress": 0.0},
    "gaze": {"x": 0.3, "y": -0.1}, "color": "#d94f3d", "narration": "Found malware Emotet in evidence ev-1f3a.",
    "cause": {"kind": "entity", "event_id": "12"}, "personality": "analyst", "seq": 7,
    "updated_at": "2026-12-01T10:00:00Z"}
SPEECH_EXAMPLE: dict[str, Any] = {
    "audio_wav_base64": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAIlYAAESsAAACABAAZGF0YQAAAAA=", "sample_rate": 22050,
    "duration_ms": 409, "visemes": [{"viseme": "rest", "start_ms": 0, "end_ms": 12},
                                    {"viseme": "MBP", "start_ms": 12, "end_ms": 59},
                                    {"viseme": "AI", "start_ms": 59, "end_ms": 311},
                                    {"viseme": "MBP", "start_ms": 311, "end_ms": 402},
                                    {"viseme": "rest", "start_ms": 402, "end_ms": 409}],
    "phonemes": [{"phoneme": "b", "start_ms": 12}, {"phoneme": "\u0251\u02d0", "start_ms": 59},  # IPA open back vowel, long
                 {"phoneme": "b", "start_ms": 311}, {"phoneme": "_", "start_ms": 402}]}


def _example(value: Any) -> dict[str, Any]:
    return {"description": "Successful Response", "content": {"application/json": {"example": value}}}


def _personality(label: str) -> avatar_pb2.Personality.ValueType:
    value = PERSONALITIES.get(label.strip().lower())
    if value is None:
        raise HTTPException(400, f"unknown personality {label!r}; one of {', '.join(PERSONALITIES)}")
    return value


class PersonalityBody(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"personality": "mentor"}]})

    personality: str = Field(description="analyst (terse), mentor (explains), red-teamer (blunt)",
                             json_schema_extra=labels(*PERSONALITIES))


class SpeakBody(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "Found malware Emotet in evidence ev-1f3a.", "personality": "analyst"}]})

    text: str = Field(min_length=1, max_length=MAX_TEXT, pattern=r"\S", description="what to say")
    personality: str = Field(default="", description="the voice: analyst, mentor, red-teamer; empty: the "
                                                     "service's default", json_schema_extra=labels("", *PERSONALITIES))


def state_json(state: avatar_pb2.AvatarState) -> dict[str, Any]:
    """An AvatarState as the API shows it (the shape STATE_EXAMPLE has)."""
    label = avatar_pb2.ResearchState.Name(state.state).removeprefix("RESEARCH_STATE_").lower() \
        if state.state in avatar_pb2.ResearchState.values() else "unspecified"
    updated = state.updated_at
    return {
        "investigation_id": state.investigation_id, "state": label, "expression": state.expression,
        "intensity": state.intensity, "emotions": {emotion.name: emotion.value for emotion in state.emotions},
        "gaze": {"x": state.gaze.x, "y": state.gaze.y}, "color": state.color, "narration": state.narration,
        "cause": {"kind": state.cause.kind, "event_id": state.cause.event_id},
        "personality": _PERSONALITY_LABEL.get(state.personality, ""), "seq": state.seq,
        "updated_at": updated.ToJsonString() if updated.seconds or updated.nanos else None,
    }


def speech_json(speech: avatar_pb2.Speech) -> dict[str, Any]:
    return {
        "audio_wav_base64": base64.b64encode(speech.wav).decode("ascii"), "sample_rate": speech.sample_rate,
        "duration_ms": speech.duration_ms,
        "visemes": [{"viseme": v.viseme, "start_ms": v.start_ms, "end_ms": v.end_ms} for v in speech.visemes],
        "phonemes": [{"phoneme": p.phoneme, "start_ms": p.start_ms} for p in speech.phonemes],
    }


def _dumps(value: Any) -> str:
    # ASCII: no text a service stored (a lone surrogate) can fail to encode on the way out.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


@router.get(f"{_PATH}/state", dependencies=[READ], responses={**_NOT_FOUND, 200: _example(STATE_EXAMPLE)})
async def get_state(investigation_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """The investigation's avatar now: research state, emotions, face, and the narration of the event behind it."""
    return state_json(await clients.avatar.GetState(
        avatar_pb2.GetStateRequest(investigation_id=investigation_id, access=caller.access())))


@router.put(f"{_PATH}/personality", dependencies=[WRITE], responses={
    **_NOT_FOUND, 200: _example(STATE_EXAMPLE | {"personality": "mentor", "seq": 8}),
    400: {"description": "A personality other than analyst, mentor, red-teamer"}})
async def set_personality(investigation_id: str, body: PersonalityBody, clients: ClientsDep,
                          caller: CallerDep) -> dict[str, Any]:
    """How the avatar narrates this investigation from now on; the answer is the state, retold."""
    return state_json(await clients.avatar.SetPersonality(avatar_pb2.SetPersonalityRequest(
        investigation_id=investigation_id, personality=_personality(body.personality), access=caller.access())))


@router.post("/api/v1/avatar/speak", dependencies=[READ], responses={
    200: _example(SPEECH_EXAMPLE), 400: {"description": "An unknown personality"},
    503: {"description": "The avatar service is not serving, or espeak-ng is not installed where it runs"}})
async def speak(body: SpeakBody, clients: ClientsDep) -> dict[str, Any]:
    """`text` as speech: a 16-bit mono WAV (base64), its phonemes (IPA) and the visemes (Preston Blair
    mouth shapes: rest, AI, E, O, U, MBP, FV, L, WQ, etc) that cover it from 0 to duration_ms."""
    personality = _personality(body.personality) if body.personality else avatar_pb2.PERSONALITY_UNSPECIFIED
    return speech_json(await clients.avatar.Speak(avatar_pb2.SpeakRequest(text=body.text, personality=personality)))


async def _send_states(websocket: WebSocket, clients: Clients, request: avatar_pb2.GetStateRequest) -> None:
    """StreamState to the socket, reopened when its deadline passes or its replica goes; a state the
    reopened stream sends again is not repeated."""
    last, tries = "", 0
    while True:
        opened = time.monotonic()
        stream = clients.avatar.StreamState(request)
        try:
            while True:
                try:
                    state = await asyncio.wait_for(anext(stream), STREAM_IDLE_S)
                except StopAsyncIteration:
                    break  # the replica stopped it (shutting down): reopen
                except TimeoutError:
                    raise RpcError(StatusCode.UNAVAILABLE, f"no avatar state for {STREAM_IDLE_S:.0f} s") from None
                text = _dumps(state_json(state))
                if text != last:
                    await websocket.send_text(text)
                    last, tries = text, 0
        except RpcError as exc:
            tries = 1 if time.monotonic() - opened > REOPEN_FAST_S else tries + 1
            if exc.code not in REOPEN_CODES or tries > REOPEN_TRIES:
                await websocket.send_text(_dumps({"error": exc.message, "code": exc.code.name}))
                await websocket.close(1013 if exc.code is StatusCode.UNAVAILABLE else 1011)
                return
            log.info("reopening an avatar state stream", investigation=request.investigation_id, code=exc.code.name)
            await asyncio.sleep(0.5 * tries)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


@router.websocket(f"{_PATH}/ws")
async def state_ws(websocket: WebSocket, investigation_id: str, clients: ClientsDep, caller: CallerDep) -> None:
    """Every AvatarState of the investigation as a JSON text message: the current one first, then
    each change. A broken stream sends {"error", "code"} and closes with 1011 (1013 when the avatar
    is unavailable). Needs the read scope; messages from the client are ignored."""
    if await refused_without_read(websocket, caller):
        return
    request = avatar_pb2.GetStateRequest(investigation_id=investigation_id, access=caller.access())
    try:  # an unknown id or an absent avatar is a status (404, 503), not a socket that closes at once
        await clients.avatar.GetState(request)
    except RpcError as exc:
        await refuse_websocket(websocket, HTTP_STATUS.get(exc.code, 502), exc.message, exc.code.name)
        return
    await accept_websocket(websocket)
    await serve_websocket(websocket, _send_states(websocket, clients, request), investigation=investigation_id)

