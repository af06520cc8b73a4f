from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from bev.swarm.v1 import swarm_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import enum_value, to_json


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["swarm"])

    @api.get("/api/v1/swarm/roles")
    async def roles(
        phase: str = Query(default="", description="ingestion, hypotheses, correlation, counterfactuals, synthesis"),
    ) -> dict[str, Any]:
        value = enum_value(swarm_pb2.Phase, "PHASE_", phase, "phase") if phase else swarm_pb2.PHASE_UNSPECIFIED
        return to_json(await clients.swarm.ListRoles(swarm_pb2.ListRolesRequest(phase=value)))

    return api
