"""The typed clients the gateway calls, one per service it calls, all over the gateway's NATS connection.

Which services those are is the gateway's entry in deploy/manifest.yaml (`calls`), the same list its
NATS user is limited to; a route module may use only the clients declared here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from bev.avatar.v1.avatar_rpc import AvatarClient
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.monitoring.v1.monitoring_rpc import MonitoringClient
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.swarm.v1.swarm_rpc import SwarmClient


class ClientsMismatch(ValueError):
    """The manifest's calls for the gateway and the clients its routes use differ."""


@dataclass(frozen=True)
class Clients:
    reasoning: ReasoningClient
    embeddings: EmbeddingsClient
    collectors: CollectorsClient
    swarm: SwarmClient
    avatar: AvatarClient
    monitoring: MonitoringClient

    @classmethod
    def over_nats(cls, nc: NatsClient, timeout_s: float | None, callees: Iterable[str]) -> Clients:
        """One client per declared callee (`Manifest.callees("gateway")`)."""
        declared, used = set(callees), {f.name for f in dataclasses.fields(cls)}
        if declared != used:
            raise ClientsMismatch(
                f"the gateway's manifest entry calls {sorted(declared)} but its routes use {sorted(used)}; "
                "declare the call in deploy/manifest.yaml and add the client here together")
        return cls(
            reasoning=ReasoningClient.over_nats(nc, timeout_s=timeout_s),
            embeddings=EmbeddingsClient.over_nats(nc, timeout_s=timeout_s),
            collectors=CollectorsClient.over_nats(nc, timeout_s=timeout_s),
            swarm=SwarmClient.over_nats(nc, timeout_s=timeout_s),
            avatar=AvatarClient.over_nats(nc, timeout_s=timeout_s),
            monitoring=MonitoringClient.over_nats(nc, timeout_s=timeout_s),
        )
