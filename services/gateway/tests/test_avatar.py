"""The avatar API (services/gateway/routes/avatar.py) over real HTTP and WebSocket, in front of the real
avatar and swarm services (services/avatar/testing.py) on a bus of its own, with keys of two teams."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from bev.engines import NatsServer, Redis
from services.avatar.settings import AvatarConfig
from services.avatar.testing import AvatarBesideSwarm, avatar_beside_swarm
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port

# The shape the web UI reads, key for key.
STATE_KEYS = ["investigation_id", "state", "expression", "intensity", "emotions", "gaze", "color", "narration",
              "cause", "personality", "seq", "updated_at"]
EMOTIONS = ["curiosity", "focus", "alarm", "joy", "doubt", "worry", "distress"]
MALWARE = {"type": "malware", "value": "Emotet", "evidence": "ev-9a2b"}


@dataclass
class Served:
    stack: AvatarBesideSwarm
    gateway: GatewayUnderTest
    http: httpx.AsyncClient  # no key of its own: each call says whose
    blue: str  # read and write, team blue
    red: str  # read and write, team red
    reader: str  # read only, team blue

    def auth(self, key: str) -> dict[str, str]:
        return self.gateway.auth(key)

    def ws(self, investigation_id: str, key: str) -> websockets.connect:
        """The state WebSocket, the key sent as a browser does: the subprotocols bev.bearer and the key."""
        url = self.gateway.url.replace("http://", "ws://") + f"/api/v1/avatar/{investigation_id}/ws"
        return websockets.connect(url, subprotocols=["bev.bearer", key], open_timeout=5)  # type: ignore[list-item]


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("avatar-api-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(own_nats: NatsServer, fresh_database: Callable[[], str], redis_server: Redis,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    config = AvatarConfig(idle_after_s=60.0)
    async with avatar_beside_swarm(own_nats.url, fresh_database(), tmp_path_factory.mktemp("swarm-data"),
                                   config) as stack, \
            gateway_on_free_port(stack.bus, fresh_database(), redis_server.url) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, timeout=30, trust_env=False) as http:
        yield Served(stack, gateway, http, await gateway.new_key(team="blue"), await gateway.new_key(team="red"),
                     await gateway.new_key(["read"], team="blue"))


async def _state(served: Served, investigation_id: str, key: str, seq: int) -> dict[str, Any]:
    """The state once it reached change `seq`."""
    for _ in range(100):
        response = await served.http.get(f"/api/v1/avatar/{investigation_id}/state", headers=served.auth(key))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["seq"] >= seq:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"seq {seq} never came: {body}")


async def test_the_state_has_the_shape_the_ui_reads(served: Served) -> None:
    investigation_id = await served.stack.investigation(team="blue")
    idle = await _state(served, investigation_id, served.reader, 0)
    assert list(idle) == STATE_KEYS and list(idle["emotions"]) == EMOTIONS
    assert idle["state"] == "idle" and idle["expression"] == "neutral" and idle["personality"] == "analyst"
    assert idle["cause"] == {"kind": "", "event_id": ""} and idle["seq"] == 0 and idle["updated_at"].endswith("Z")

    await served.stack.emit(investigation_id, "entity", MALWARE)
    alert = await _state(served, investigation_id, served.blue, 1)
    assert list(alert) == STATE_KEYS and list(alert["emotions"]) == EMOTIONS
    assert alert["investigation_id"] == investigation_id and alert["state"] == "alert_discovery"
    assert alert["expression"] == "alarm" and alert["color"] == "#d94f3d" and alert["seq"] == 1
    assert alert["narration"] == "Found malware Emotet in evidence ev-9a2b."
    assert alert["cause"]["kind"] == "entity" and alert["cause"]["event_id"].isdigit()
    assert isinstance(alert["intensity"], float) and 0.8 < alert["intensity"] <= 0.9
    assert alert["intensity"] == alert["emotions"]["alarm"]
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in alert["emotions"].values())
    assert set(alert["gaze"]) == {"x", "y"} and all(-1 <= v <= 1 for v in alert["gaze"].values())

    for key in (served.red,):  # another team's investigation does not exist for it
        missing = await served.http.get(f"/api/v1/avatar/{investigation_id}/state", headers=served.auth(key))
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    unknown = await served.http.get("/api/v1/avatar/no-such-investigation/state", headers=served.auth(served.blue))
    assert unknown.status_code == 404


async def test_a_personality_is_set_with_the_write_scope(served: Served) -> None:
    investigation_id = await served.stack.investigation(team="blue")
    await served.stack.emit(investigation_id, "entity", MALWARE)
    await _state(served, investigation_id, served.blue, 1)
    path = f"/api/v1/avatar/{investigation_id}/personality"
    answer = await served.http.put(path, json={"personality": "red-teamer"}, headers=served.auth(served.blue))
    assert answer.status_code == 200, answer.text
    assert answer.json()["personality"] == "red-teamer" and answer.json()["seq"] == 2
    assert answer.json()["narration"] == "malware Emotet, right there in ev-9a2b. Game on."
    for body, status in (({"personality": "pirate"}, 400), ({"personality": ""}, 400), ({}, 422),
                         ({"personality": "mentor", "mood": "sunny"}, 422), ({"personality": 1}, 422)):
        refused = await served.http.put(path, json=body, headers=served.auth(served.blue))
        assert refused.status_code == status, (body, refused.text)
    assert "analyst, mentor, red-teamer" in (await served.http.put(
        path, json={"personality": "pirate"}, headers=served.auth(served.blue))).json()["error"]
    forbidden = await served.http.put(path, json={"personality": "mentor"}, headers=served.auth(served.reader))
    assert forbidden.status_code == 403
    elsewhere = await served.http.put(path, json={"personality": "mentor"}, headers=served.auth(served.red))
    assert elsewhere.status_code == 404
    assert (await _state(served, investigation_id, served.blue, 2))["personality"] == "red-teamer"


async def test_speak_answers_audio_and_visemes(served: Served) -> None:
    response = await served.http.post("/api/v1/avatar/speak", json={"text": "bob", "personality": "mentor"},
                                      headers=served.auth(served.reader))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"audio_wav_base64", "sample_rate", "duration_ms", "visemes", "phonemes"}
    with wave.open(io.BytesIO(base64.b64decode(body["audio_wav_base64"]))) as audio:
        assert audio.getframerate() == body["sample_rate"] and audio.getnchannels() == 1
        assert abs(audio.getnframes() * 1000 / body["sample_rate"] - body["duration_ms"]) <= 1
    assert [v["viseme"] for v in body["visemes"]] == ["rest", "MBP", "O", "MBP", "rest"]  # the mentor is British
    assert body["visemes"][-1]["end_ms"] == body["duration_ms"]
    assert all(set(p) == {"phoneme", "start_ms"} for p in body["phonemes"]) and body["phonemes"][0]["phoneme"] == "b"
    default = await served.http.post("/api/v1/avatar/speak", json={"text": "Found malware."},
                                     headers=served.auth(served.reader))
    assert default.status_code == 200 and default.json()["duration_ms"] > 0
    for payload, status in (({"text": "x" * 401}, 422), ({"text": ""}, 422), ({"text": "   "}, 422), ({}, 422),
                            ({"text": "hi", "personality": "pirate"}, 400), ({"text": "hi", "voice": "x"}, 422)):
        refused = await served.http.post("/api/v1/avatar/speak", json=payload, headers=served.auth(served.reader))
        assert refused.status_code == status, (payload, refused.text)


async def test_the_websocket_sends_the_state_then_each_change(served: Served) -> None:
    investigation_id = await served.stack.investigation(team="blue")
    async with served.ws(investigation_id, served.reader) as ws:
        assert ws.subprotocol == "bev.bearer"
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert list(first) == STATE_KEYS and first["state"] == "idle" and first["seq"] == 0
        await served.stack.emit(investigation_id, "phase", {"phase": "ingestion", "progress": 0.05})
        await served.stack.emit(investigation_id, "entity", MALWARE)
        changes = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
        assert [(c["seq"], c["state"]) for c in changes] == [(1, "scanning"), (2, "alert_discovery")]
        assert changes[1]["narration"] == "Found malware Emotet in evidence ev-9a2b."
        await served.http.put(f"/api/v1/avatar/{investigation_id}/personality", json={"personality": "mentor"},
                              headers=served.auth(served.blue))
        retold = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert retold["seq"] == 3 and retold["personality"] == "mentor" and retold["state"] == "alert_discovery"


async def test_the_websocket_refuses_before_it_opens(served: Served) -> None:
    investigation_id = await served.stack.investigation(team="blue")
    write_only = await served.gateway.new_key(["write"], team="blue")
    for key, status in ((served.red, 404), (write_only, 403), ("bev_nobody_0000", 401)):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with served.ws(investigation_id, key):
                pass
        assert refused.value.response.status_code == status, key
    with pytest.raises(websockets.InvalidStatus) as unknown:
        async with served.ws("no-such-investigation", served.blue):
            pass
    assert unknown.value.response.status_code == 404


async def test_the_schema_documents_each_route(served: Served) -> None:
    paths = (await served.http.get("/openapi.json", headers=served.auth(served.reader))).json()["paths"]
    expected = {("/api/v1/avatar/{investigation_id}/state", "get"): ("read", {"200", "404"}),
                ("/api/v1/avatar/{investigation_id}/personality", "put"): ("write", {"200", "400", "404", "422"}),
                ("/api/v1/avatar/speak", "post"): ("read", {"200", "400", "422", "503"})}
    for (path, method), (scope, statuses) in expected.items():
        operation = paths[path][method]
        assert operation["x-bev-scope"] == scope and statuses <= set(operation["responses"]), (path, operation)
        example = operation["responses"]["200"]["content"]["application/json"]["example"]
        assert list(example) == (STATE_KEYS if method != "post" else
                                 ["audio_wav_base64", "sample_rate", "duration_ms", "visemes", "phonemes"])
