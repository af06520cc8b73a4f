"""The avatar inside a test, as the fleet runs it: beside the real swarm service (its store on a real
PostgreSQL, DBOS included) on one bus, reading the events the swarm's own emitter publishes on
JetStream (`bev.events.investigation.<id>.<kind>`). The swarm's queue is polled once an hour, so an
investigation written here stays queued rather than runs (the collectors and reasoning it would call
are not served); its events come from `emit`, the path every swarm step takes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from bev.avatar.v1.avatar_rpc import AvatarClient
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import Avatar, assemble
from services.avatar.settings import AvatarConfig
from services.swarm.scope import Scope
from services.swarm.servicer import Swarm, SwarmDeps
from services.swarm.servicer import assemble as assemble_swarm
from services.swarm.settings import SwarmConfig
from services.swarm.targets import infer_target


@dataclass
class AvatarBesideSwarm:
    avatar: Avatar
    swarm: Swarm
    bus: NatsClient  # a caller's connection
    client: AvatarClient  # the avatar, over `bus`

    async def investigation(self, target: str = "browser-update.example.com", *, team: str = "",
                            tlp: str = "clear") -> str:
        """A queued investigation of `target`, owned by `team`, written as the swarm writes one."""
        assert self.swarm.store is not None
        investigation_id = str(uuid.uuid4())
        typed = infer_target(target, "")
        await self.swarm.store.create(
            id=investigation_id, target=typed.value, target_type=typed.kind, stix_type=typed.stix_type, mode="hybrid",
            budget={"max_tool_calls": 200, "max_tokens": 200000, "max_wall_s": 900.0, "max_depth": 2},
            scope={**Scope.build(typed, []).to_dict(), "opsec": False}, seeds=[], tlp=tlp, team=team)
        return investigation_id

    async def emit(self, investigation_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """An event of the investigation, stored and published by the swarm's own emitter."""
        assert self.swarm.engine is not None
        await self.swarm.engine.deps.emit(investigation_id, kind, data)


@asynccontextmanager
async def avatar_beside_swarm(nats_url: str, dsn: str, data_dir: Path,
                              config: AvatarConfig | None = None) -> AsyncIterator[AvatarBesideSwarm]:
    """The swarm and the avatar served on `nats_url`, the swarm's database at `dsn` (a new one)."""
    swarm_nc = await nats.connect(nats_url)  # what the swarm calls others and publishes events over
    avatar_nc = await nats.connect(nats_url)  # the avatar's own, as its process has
    try:
        js = swarm_nc.jetstream()
        try:  # the fleet's supervisor creates the stream; here the first test on this bus does
            await js.stream_info("BEV_EVENTS")
        except NotFoundError:
            await js.add_stream(name="BEV_EVENTS", subjects=["bev.events.>"])
        swarm = await assemble_swarm(InstanceInfo(service="swarm"), SwarmConfig(queue_poll_s=3600), SwarmDeps(
            dsn, CollectorsClient.over_nats(swarm_nc), EmbeddingsClient.over_nats(swarm_nc),
            ReasoningClient.over_nats(swarm_nc), data_dir, swarm_nc))
        avatar = await assemble(InstanceInfo(service="avatar"), config or AvatarConfig(), avatar_nc)
        async with serving_on_nats(swarm, nats_url), serving_on_nats(avatar, nats_url) as bus:
            yield AvatarBesideSwarm(avatar, swarm, bus, AvatarClient.over_nats(bus))
    finally:
        await avatar_nc.close()
        await swarm_nc.close()
