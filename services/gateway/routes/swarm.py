from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from bev.swarm.v1 import swarm_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import enum_value, labels, to_json

PHASES = [name.removeprefix("PHASE_").lower() for name in swarm_pb2.Phase.keys() if name != "PHASE_UNSPECIFIED"]


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["swarm"])

    @api.get("/api/v1/swarm/roles")
    async def roles(
        phase: Annotated[str, Query(description="ingestion, hypotheses, correlation, counterfactuals, synthesis "
                                                "(any case); empty: every phase",
                                    json_schema_extra=labels("", *PHASES))] = "",
    ) -> dict[str, Any]:
        value = enum_value(swarm_pb2.Phase, "PHASE_", phase, "phase") if phase else swarm_pb2.PHASE_UNSPECIFIED
        return to_json(await clients.swarm.ListRoles(swarm_pb2.ListRolesRequest(phase=value)))

    return api
