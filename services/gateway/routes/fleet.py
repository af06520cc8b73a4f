from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bev.common.v1 import common_pb2
from bev.monitoring.v1 import monitoring_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import ERROR_SCHEMA, to_json

HEALTH = {"type": "object", "required": ["status", "missing", "services"], "properties": {
    "status": {"enum": ["serving", "degraded"]}, "missing": {"type": "array", "items": {"type": "string"}},
    "services": {"type": "array", "items": {"type": "string"}}}}


def router(clients: Clients) -> APIRouter:
    api = APIRouter()

    async def fleet() -> monitoring_pb2.FleetHealthResponse:
        return await clients.monitoring.FleetHealth(monitoring_pb2.FleetHealthRequest(timeout_s=1.0), timeout_s=10)

    @api.get("/healthz", tags=["fleet"], responses={
        200: {"description": "Every service has a serving instance", "content": {"application/json": {"schema": HEALTH}}},
        503: {"description": "A service has no serving instance (`missing` names it), or monitoring cannot be reached",
              "content": {"application/json": {"schema": {"anyOf": [HEALTH, ERROR_SCHEMA]}}}}})
    async def healthz() -> JSONResponse:
        """Fleet health over NATS: 200 when every service has a serving instance, else 503."""
        health = await fleet()
        serving = health.status == common_pb2.HealthResponse.STATUS_SERVING
        body = {
            "status": "serving" if serving else "degraded",
            "missing": list(health.missing),
            "services": sorted({i.service for i in health.instances}),
        }
        return JSONResponse(body, status_code=200 if serving else 503)

    @api.get("/api/v1/services", tags=["fleet"])
    async def services() -> dict[str, Any]:
        """Every service instance: node, state, uptime, request and error counts, addresses."""
        return to_json(await fleet())

    return api
