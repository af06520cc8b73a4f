"""The typed clients the gateway calls, one per service, all over the gateway's NATS connection."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from bev.avatar.v1.avatar_rpc import AvatarClient
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.monitoring.v1.monitoring_rpc import MonitoringClient
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.swarm.v1.swarm_rpc import SwarmClient


@dataclass(frozen=True)
class Clients:
    reasoning: ReasoningClient
    embeddings: EmbeddingsClient
    collectors: CollectorsClient
    swarm: SwarmClient
    avatar: AvatarClient
    monitoring: MonitoringClient

    @classmethod
    def over_nats(cls, nc: NatsClient, timeout_s: float) -> Clients:
        return cls(
            reasoning=ReasoningClient.over_nats(nc, timeout_s=timeout_s),
            embeddings=EmbeddingsClient.over_nats(nc, timeout_s=timeout_s),
            collectors=CollectorsClient.over_nats(nc, timeout_s=timeout_s),
            swarm=SwarmClient.over_nats(nc, timeout_s=timeout_s),
            avatar=AvatarClient.over_nats(nc, timeout_s=timeout_s),
            monitoring=MonitoringClient.over_nats(nc, timeout_s=timeout_s),
        )
