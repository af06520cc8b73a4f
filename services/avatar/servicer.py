"""Avatar: follows every investigation's events on the bus and answers each one's avatar.

The service subscribes to `bev.events.investigation.>` (core NATS: every replica sees every event, so
any replica answers the same state) and keeps one `Mind` per investigation, the least recently used
dropped past `max_investigations`. Before it answers for an investigation it asks the swarm whether
the caller may see it (GetInvestigation with the caller's access: NOT_FOUND passes through), and
trusts a yes for `access_cache_s`. An investigation it has no event for yet is idle.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from bev.avatar.v1 import avatar_pb2
from bev.avatar.v1.avatar_rpc import AvatarServicer
from bev.common.v1 import common_pb2
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.runtime import ServiceRuntime
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmClient
from bev.telemetry import cache_stats, get_logger
from services.avatar import speech
from services.avatar.narration import Personality
from services.avatar.settings import AvatarConfig, Settings
from services.avatar.states import EMOTIONS, Event, Mind, ResearchState, View

log = get_logger(__name__)

EVENTS = "bev.events.investigation.>"  # services/swarm/agents.py publishes <id>.<kind> under it
WATCH_QUEUE = 64  # states waiting for one slow StreamState reader; the oldest is dropped past it
ACCESS_CACHE_MAX = 10_000
VISIBLE_CHANGE = 0.02  # a faded emotion is sent again once it moved this much since the last state sent

EVENTS_SEEN = Counter("bev_avatar_events_total", "Investigation events the avatar read", ["outcome"])
ACCESS_CACHE = cache_stats("avatar_access")  # bev_cache_requests_total{cache="avatar_access"}

STATE_PROTO = {state: avatar_pb2.ResearchState.Value(f"RESEARCH_STATE_{state.name}") for state in ResearchState}
PERSONALITY_PROTO = {
    Personality.ANALYST: avatar_pb2.PERSONALITY_ANALYST,
    Personality.MENTOR: avatar_pb2.PERSONALITY_MENTOR,
    Personality.RED_TEAMER: avatar_pb2.PERSONALITY_RED_TEAMER,
}
_PERSONALITY_OF = {proto: personality for personality, proto in PERSONALITY_PROTO.items()}


def to_proto(view: View) -> avatar_pb2.AvatarState:
    updated = Timestamp()
    updated.FromNanoseconds(int(view.updated_at * 1e9))
    return avatar_pb2.AvatarState(
        investigation_id=view.investigation_id, state=STATE_PROTO[view.state],
        emotions=[avatar_pb2.Emotion(name=name, value=view.emotions[name]) for name in EMOTIONS],
        expression=view.expression, intensity=view.intensity,
        gaze=avatar_pb2.Gaze(x=view.gaze[0], y=view.gaze[1]), color=view.color, narration=view.narration,
        cause=avatar_pb2.Cause(kind=view.cause_kind, event_id=view.cause_id),
        personality=PERSONALITY_PROTO[view.personality], seq=view.seq, updated_at=updated)


def _visibly_different(a: View, b: View) -> bool:
    return a.seq != b.seq or any(abs(a.emotions[n] - b.emotions[n]) >= VISIBLE_CHANGE for n in EMOTIONS)


class Avatar(AvatarServicer):
    def __init__(self, info: InstanceInfo, config: AvatarConfig, nc: NatsClient, swarm: SwarmClient) -> None:
        super().__init__(info)
        self.config = config
        self.nc = nc
        self.swarm = swarm
        self._minds: OrderedDict[str, Mind] = OrderedDict()
        self._watchers: dict[str, set[asyncio.Queue[View]]] = {}
        self._allowed: OrderedDict[tuple[str, str, int], float] = OrderedDict()  # -> monotonic expiry
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(EVENTS, cb=self._on_message)
        await self.nc.flush()  # subscribed on the server before start() returns

    async def close(self) -> None:
        if self._subscription is not None and not self.nc.is_closed:
            await self._subscription.unsubscribe()
        self._subscription = None

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        cause = await asyncio.to_thread(speech.problem)
        return [
            common_pb2.HealthCheck(name="events", ok=self._subscription is not None and self.nc.is_connected,
                                   detail=f"subscribed to {EVENTS}; {len(self._minds)} investigations followed"),
            common_pb2.HealthCheck(name="speech", ok=not cause, detail=cause or "espeak-ng"),
        ]

    # --- state ----------------------------------------------------------------------------------

    def _mind(self, investigation_id: str) -> Mind:
        mind = self._minds.get(investigation_id)
        if mind is None:
            mind = Mind(investigation_id, Personality(self.config.personality), half_life_s=self.config.half_life_s,
                        idle_after_s=self.config.idle_after_s, now=time.time())
            self._minds[investigation_id] = mind
            self._evict(keep=investigation_id)
        self._minds.move_to_end(investigation_id)
        return mind

    def _evict(self, keep: str) -> None:
        excess = len(self._minds) - self.config.max_investigations
        if excess <= 0:
            return
        dropped = [key for key in self._minds if key not in self._watchers and key != keep][:excess]
        for key in dropped:  # oldest first; one being streamed stays
            del self._minds[key]

    def _publish(self, mind: Mind) -> None:
        watchers = self._watchers.get(mind.investigation_id)
        if not watchers:
            return
        view = mind.view(time.time())
        for queue in watchers:
            if queue.full():
                queue.get_nowait()  # a reader this far behind wants the latest states, not all
            queue.put_nowait(view)

    def _current(self, mind: Mind) -> View:
        """The view now, after going idle if it is time to (which every watcher hears of)."""
        now = time.time()
        if mind.settle(now):
            self._publish(mind)
        return mind.view(now)

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = Event.from_json(msg.data)
        except ValueError as exc:
            EVENTS_SEEN.labels("invalid").inc()
            log.warning("not an investigation event", subject=msg.subject, error=str(exc))
            return
        mind = self._mind(event.investigation_id)
        now = time.time()
        if mind.settle(now):
            self._publish(mind)
        if mind.on_event(event, now):
            EVENTS_SEEN.labels("changed").inc()
            self._publish(mind)
        else:
            EVENTS_SEEN.labels("ignored").inc()

    # --- access ---------------------------------------------------------------------------------

    async def _check(self, investigation_id: str, access: common_pb2.Access) -> None:
        """Raises the swarm's NOT_FOUND (or any error of its) unless `access` may see the investigation."""
        if not investigation_id:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "investigation_id is required")
        key = (investigation_id, access.team, int(access.max_tlp))
        now = time.monotonic()
        expiry = self._allowed.get(key)
        if expiry is not None and expiry > now:
            ACCESS_CACHE.hit()
            return
        ACCESS_CACHE.miss()
        await self.swarm.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation_id, access=access))
        self._allowed[key] = now + self.config.access_cache_s
        self._allowed.move_to_end(key)
        while len(self._allowed) > ACCESS_CACHE_MAX:
            self._allowed.popitem(last=False)

    # --- RPCs -----------------------------------------------------------------------------------

    async def GetState(self, request: avatar_pb2.GetStateRequest, ctx: CallContext) -> avatar_pb2.AvatarState:
        await self._check(request.investigation_id, request.access)
        return to_proto(self._current(self._mind(request.investigation_id)))

    async def StreamState(self, request: avatar_pb2.GetStateRequest,
                          ctx: CallContext) -> AsyncIterator[avatar_pb2.AvatarState]:
        investigation_id = request.investigation_id
        await self._check(investigation_id, request.access)
        queue: asyncio.Queue[View] = asyncio.Queue(maxsize=WATCH_QUEUE)
        self._watchers.setdefault(investigation_id, set()).add(queue)
        loop = asyncio.get_running_loop()
        try:
            sent = self._current(self._mind(investigation_id))
            while not queue.empty():  # going idle just now is in `sent` already
                queue.get_nowait()
            yield to_proto(sent)
            sent_at = loop.time()
            while True:
                try:
                    view = await asyncio.wait_for(queue.get(), self.config.stream_refresh_s)
                except TimeoutError:  # nothing happened: the faded state if it shows, or a keep-alive
                    view = self._current(self._mind(investigation_id))
                    if not queue.empty():
                        continue  # it went idle: that change is queued
                    if not _visibly_different(view, sent) and loop.time() - sent_at < self.config.stream_keepalive_s:
                        continue
                yield to_proto(view)
                sent, sent_at = view, loop.time()
        finally:
            watchers = self._watchers.get(investigation_id, set())
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(investigation_id, None)

    async def SetPersonality(self, request: avatar_pb2.SetPersonalityRequest,
                             ctx: CallContext) -> avatar_pb2.AvatarState:
        personality = _PERSONALITY_OF.get(request.personality)
        if personality is None:
            raise RpcError(StatusCode.INVALID_ARGUMENT,
                           "personality is required: PERSONALITY_ANALYST, PERSONALITY_MENTOR or PERSONALITY_RED_TEAMER")
        await self._check(request.investigation_id, request.access)
        mind = self._mind(request.investigation_id)
        view = self._current(mind)
        if mind.set_personality(personality):
            self._publish(mind)
            view = mind.view(time.time())
        return to_proto(view)

    async def Speak(self, request: avatar_pb2.SpeakRequest, ctx: CallContext) -> avatar_pb2.Speech:
        text = speech.speakable(request.text)
        if not text:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "text is required")
        if len(request.text) > speech.MAX_TEXT:
            raise RpcError(StatusCode.INVALID_ARGUMENT,
                           f"text is {len(request.text)} characters; at most {speech.MAX_TEXT} are spoken")
        if request.personality == avatar_pb2.PERSONALITY_UNSPECIFIED:
            personality = Personality(self.config.personality)
        elif request.personality in _PERSONALITY_OF:
            personality = _PERSONALITY_OF[request.personality]
        else:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"unknown personality {request.personality}")
        try:
            said = await speech.speak(text, personality)
        except speech.SpeechUnavailable as exc:
            raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None
        return avatar_pb2.Speech(
            wav=said.wav, sample_rate=said.sample_rate, duration_ms=said.duration_ms,
            visemes=[avatar_pb2.Viseme(viseme=v.viseme, start_ms=v.start_ms, end_ms=v.end_ms) for v in said.visemes],
            phonemes=[avatar_pb2.Phoneme(phoneme=p.phoneme, start_ms=p.start_ms) for p in said.phonemes])


async def assemble(info: InstanceInfo, config: AvatarConfig, nc: NatsClient) -> Avatar:
    """The service on `nc`: it reads events and asks the swarm over the same connection."""
    return Avatar(info, config, nc, SwarmClient.over_nats(nc))


async def build(runtime: ServiceRuntime[Settings]) -> Avatar:
    return await assemble(runtime.info, runtime.settings.avatar, runtime.nc)
