"""The avatar service over NATS beside the real swarm: it follows the events the swarm's own emitter
publishes on JetStream (bev.events.investigation.<id>.<kind>), streams each change, answers only
callers the swarm lets see the investigation (its access cache counting hits and misses), and speaks."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from bev.avatar.v1 import avatar_pb2
from bev.common.v1 import common_pb2
from bev.engines import NatsServer
from bev.rpc import RpcError, StatusCode
from services.avatar.settings import AvatarConfig
from services.avatar.testing import AvatarBesideSwarm, avatar_beside_swarm

# Fast clocks, so that fading, going idle and keep-alives happen within a test.
CONFIG = AvatarConfig(half_life_s=2.0, idle_after_s=4.0, stream_refresh_s=0.2, stream_keepalive_s=1.0,
                      access_cache_s=0.5, max_investigations=8)
MALWARE = {"type": "malware", "value": "Emotet", "evidence": "ev-9a2b"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A bus of this module's own: no swarm or avatar another test serves may answer here."""
    with NatsServer(tmp_path_factory.mktemp("avatar-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(own_nats: NatsServer, fresh_database: Callable[[], str],
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AvatarBesideSwarm]:
    async with avatar_beside_swarm(own_nats.url, fresh_database(), tmp_path_factory.mktemp("swarm-data"),
                                   CONFIG) as served:
        yield served


async def _until(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float = 5) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last: {value}"
        await asyncio.sleep(0.05)


def _get(stack: AvatarBesideSwarm, investigation_id: str,
         access: common_pb2.Access | None = None) -> Callable[[], Awaitable[avatar_pb2.AvatarState]]:
    request = avatar_pb2.GetStateRequest(investigation_id=investigation_id, access=access)
    return lambda: stack.client.GetState(request)


async def test_an_investigation_without_events_is_idle_and_an_unknown_one_is_not_found(
        stack: AvatarBesideSwarm) -> None:
    investigation_id = await stack.investigation()
    state = await _get(stack, investigation_id)()
    assert state.investigation_id == investigation_id and state.state == avatar_pb2.RESEARCH_STATE_IDLE
    assert state.expression == "neutral" and state.intensity == 0 and state.seq == 0 and state.color == "#8a94a6"
    assert [e.name for e in state.emotions] == ["curiosity", "focus", "alarm", "joy", "doubt", "worry", "distress"]
    assert state.personality == avatar_pb2.PERSONALITY_ANALYST and state.narration == "Standing by: no new events."
    assert state.cause.kind == "" and state.updated_at.seconds > 0
    for missing in ("no-such-investigation", ""):
        with pytest.raises(RpcError) as refused:
            await _get(stack, missing)()
        assert refused.value.code is (StatusCode.NOT_FOUND if missing else StatusCode.INVALID_ARGUMENT)


async def test_the_events_the_swarm_publishes_move_the_avatar(stack: AvatarBesideSwarm) -> None:
    investigation_id = await stack.investigation()
    await stack.emit(investigation_id, "phase", {"phase": "ingestion", "progress": 0.05})
    scanning = await _until(_get(stack, investigation_id), lambda s: s.seq == 1)
    assert scanning.state == avatar_pb2.RESEARCH_STATE_SCANNING and scanning.narration == "Phase ingestion started."
    assert scanning.expression == "curiosity" and scanning.cause.kind == "phase"

    # Not an event: read, refused, and the subscription goes on.
    await stack.bus.publish(f"bev.events.investigation.{investigation_id}.phase", b"{not json")
    await stack.emit(investigation_id, "tool_result", {"agent": "c1", "tool": "collectors.Collect", "key": "k",
                                                       "status": "ok", "ms": 12})  # no reaction
    await stack.emit(investigation_id, "entity", MALWARE)
    alert = await _until(_get(stack, investigation_id), lambda s: s.seq == 2)
    [row] = [e for e in await stack.swarm.store.events(investigation_id) if e.kind == "entity"]  # type: ignore[union-attr]
    assert alert.state == avatar_pb2.RESEARCH_STATE_ALERT_DISCOVERY and alert.color == "#d94f3d"
    assert (alert.cause.kind, alert.cause.event_id) == ("entity", str(row.id))
    assert alert.narration == "Found malware Emotet in evidence ev-9a2b."
    assert alert.expression == "alarm" and alert.intensity == pytest.approx(0.9, abs=0.05)
    assert alert.updated_at.ToNanoseconds() > scanning.updated_at.ToNanoseconds()


async def _reader(stream: AsyncIterator[avatar_pb2.AvatarState], into: asyncio.Queue[avatar_pb2.AvatarState]) -> None:
    async for state in stream:
        await into.put(state)


async def test_the_stream_sends_the_state_then_each_change_then_fades_to_idle(stack: AvatarBesideSwarm) -> None:
    investigation_id = await stack.investigation()
    received: asyncio.Queue[avatar_pb2.AvatarState] = asyncio.Queue()
    stream = stack.client.StreamState(avatar_pb2.GetStateRequest(investigation_id=investigation_id))
    reader = asyncio.create_task(_reader(stream, received))
    try:
        first = await asyncio.wait_for(received.get(), 5)
        assert first.state == avatar_pb2.RESEARCH_STATE_IDLE and first.seq == 0
        began = time.monotonic()
        await stack.emit(investigation_id, "entity", MALWARE)
        alert = await asyncio.wait_for(received.get(), 5)
        assert alert.state == avatar_pb2.RESEARCH_STATE_ALERT_DISCOVERY and alert.seq == 1
        assert time.monotonic() - began < 1  # sent on the event, not on a timer
        faded: list[avatar_pb2.AvatarState] = []
        while (state := await asyncio.wait_for(received.get(), 5)).seq == 1:
            faded.append(state)  # the same change, fading (half-life 2 s)
        alarms = [alert.intensity] + [s.intensity for s in faded]
        assert len(faded) >= 3 and alarms == sorted(alarms, reverse=True) and alarms[-1] < alarms[0] / 2
        times = [s.updated_at.ToNanoseconds() for s in (alert, *faded)]
        assert times == sorted(times) and len(set(times)) == len(times)  # each as of the moment it was sent
        assert state.state == avatar_pb2.RESEARCH_STATE_IDLE and state.seq == 2  # idle_after_s (4 s) later
        assert state.updated_at.ToNanoseconds() - alert.updated_at.ToNanoseconds() == pytest.approx(4e9, abs=0.5e9)
        keepalive = await asyncio.wait_for(received.get(), 3)  # nothing changes: the state again
        assert keepalive.seq == 2 and keepalive.state == avatar_pb2.RESEARCH_STATE_IDLE
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]


async def test_another_teams_investigation_is_not_found(stack: AvatarBesideSwarm) -> None:
    investigation_id = await stack.investigation(team="blue", tlp="amber")
    await stack.emit(investigation_id, "entity", MALWARE)
    blue = common_pb2.Access(team="blue", max_tlp=common_pb2.TLP_AMBER)
    assert (await _until(_get(stack, investigation_id, blue), lambda s: s.seq == 1)).narration.startswith("Found")
    assert (await _get(stack, investigation_id, common_pb2.Access())()).seq == 1  # a service, or an admin key
    red = common_pb2.Access(team="red", max_tlp=common_pb2.TLP_RED)
    below = common_pb2.Access(team="blue", max_tlp=common_pb2.TLP_GREEN)  # blue, but not cleared for amber
    for access in (red, below):
        calls: list[Awaitable[Any]] = [
            _get(stack, investigation_id, access)(),
            stack.client.SetPersonality(avatar_pb2.SetPersonalityRequest(
                investigation_id=investigation_id, personality=avatar_pb2.PERSONALITY_MENTOR, access=access)),
            anext(stack.client.StreamState(avatar_pb2.GetStateRequest(investigation_id=investigation_id,
                                                                      access=access)))]
        for call in calls:
            with pytest.raises(RpcError) as refused:
                await call
            assert refused.value.code is StatusCode.NOT_FOUND and investigation_id in refused.value.message
    assert (await _get(stack, investigation_id, blue)()).personality == avatar_pb2.PERSONALITY_ANALYST


async def test_a_personality_retells_the_current_narration(stack: AvatarBesideSwarm) -> None:
    investigation_id = await stack.investigation()
    await stack.emit(investigation_id, "entity", MALWARE)
    before = await _until(_get(stack, investigation_id), lambda s: s.seq == 1)

    def set_to(personality: avatar_pb2.Personality.ValueType) -> Awaitable[avatar_pb2.AvatarState]:
        return stack.client.SetPersonality(avatar_pb2.SetPersonalityRequest(
            investigation_id=investigation_id, personality=personality))

    mentor = await set_to(avatar_pb2.PERSONALITY_MENTOR)
    assert mentor.personality == avatar_pb2.PERSONALITY_MENTOR and mentor.seq == 2
    assert mentor.narration == "Evidence ev-9a2b names the malware Emotet. That deserves your attention."
    assert (mentor.cause.kind, mentor.cause.event_id) == (before.cause.kind, before.cause.event_id)
    assert (await set_to(avatar_pb2.PERSONALITY_MENTOR)).seq == 2  # the same again changes nothing
    assert (await _get(stack, investigation_id)()).narration == mentor.narration
    red_teamer = await set_to(avatar_pb2.PERSONALITY_RED_TEAMER)
    assert red_teamer.narration == "malware Emotet, right there in ev-9a2b. Game on." and red_teamer.seq == 3
    with pytest.raises(RpcError) as refused:
        await set_to(avatar_pb2.PERSONALITY_UNSPECIFIED)
    assert refused.value.code is StatusCode.INVALID_ARGUMENT


async def test_the_least_recently_used_investigation_is_forgotten_unless_streamed(
        stack: AvatarBesideSwarm) -> None:
    watched, forgotten = await stack.investigation(), await stack.investigation()
    received: asyncio.Queue[avatar_pb2.AvatarState] = asyncio.Queue()
    stream = stack.client.StreamState(avatar_pb2.GetStateRequest(investigation_id=watched))
    reader = asyncio.create_task(_reader(stream, received))
    try:
        assert (await asyncio.wait_for(received.get(), 5)).seq == 0
        for investigation_id in (watched, forgotten):
            await stack.emit(investigation_id, "phase", {"phase": "ingestion", "progress": 0.05})
        await _until(_get(stack, forgotten), lambda s: s.seq == 1)
        others = [await stack.investigation() for _ in range(CONFIG.max_investigations)]
        for investigation_id in others:
            await stack.emit(investigation_id, "phase", {"phase": "ingestion", "progress": 0.05})
        await _until(_get(stack, others[-1]), lambda s: s.seq == 1)
        assert (await _get(stack, forgotten)()).seq == 0  # dropped, so idle again
        await stack.emit(watched, "entity", MALWARE)
        while (state := await asyncio.wait_for(received.get(), 5)).seq < 2:
            pass
        assert state.seq == 2 and state.state == avatar_pb2.RESEARCH_STATE_ALERT_DISCOVERY  # kept while streamed
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]


async def test_speak_over_the_bus(stack: AvatarBesideSwarm) -> None:
    said = await stack.client.Speak(avatar_pb2.SpeakRequest(text="Found malware Emotet in evidence ev-9a2b.",
                                                            personality=avatar_pb2.PERSONALITY_MENTOR))
    with wave.open(io.BytesIO(said.wav)) as audio:
        assert audio.getframerate() == said.sample_rate == 22050
        assert abs(audio.getnframes() * 1000 / said.sample_rate - said.duration_ms) <= 1
    assert said.visemes[0].start_ms == 0 and said.visemes[-1].end_ms == said.duration_ms
    assert "MBP" in [v.viseme for v in said.visemes] and said.phonemes
    assert (await stack.client.Speak(avatar_pb2.SpeakRequest(text="x" * 400))).duration_ms > 0
    for request in (avatar_pb2.SpeakRequest(text="x" * 401), avatar_pb2.SpeakRequest(text=" \n "),
                    avatar_pb2.SpeakRequest(text="hi", personality=99)):  # type: ignore[arg-type]
        with pytest.raises(RpcError) as refused:
            await stack.client.Speak(request)
        assert refused.value.code is StatusCode.INVALID_ARGUMENT, request


async def test_health_reports_the_subscription_and_speech(stack: AvatarBesideSwarm) -> None:
    health = await stack.client.Health(common_pb2.HealthRequest())
    assert health.status == common_pb2.HealthResponse.STATUS_SERVING
    assert {check.name: check.ok for check in health.checks} == {"events": True, "speech": True}


def cache_lookups(result: str) -> float:
    return REGISTRY.get_sample_value("bev_cache_requests_total", {"cache": "avatar_access", "result": result}) or 0.0


@pytest.mark.asyncio(loop_scope="session")
async def test_access_checks_count_hits_and_misses(stack: AvatarBesideSwarm) -> None:
    """The swarm's yes is trusted for access_cache_s: bev_cache_requests_total{cache="avatar_access"}
    counts the lookups it answered (hits) and those it asked the swarm (misses), and the hit rate."""
    request = avatar_pb2.GetStateRequest(investigation_id=await stack.investigation())
    hits, misses = cache_lookups("hit"), cache_lookups("miss")
    await stack.client.GetState(request)  # asks the swarm
    await stack.client.GetState(request)  # the swarm's yes, cached
    await stack.client.GetState(request)
    assert (cache_lookups("hit") - hits, cache_lookups("miss") - misses) == (2, 1)
    await asyncio.sleep(CONFIG.access_cache_s + 0.1)
    await stack.client.GetState(request)  # expired: asks again
    assert (cache_lookups("hit") - hits, cache_lookups("miss") - misses) == (2, 2)
    rate = REGISTRY.get_sample_value("bev_cache_hit_rate", {"cache": "avatar_access"})
    assert rate == cache_lookups("hit") / (cache_lookups("hit") + cache_lookups("miss"))
