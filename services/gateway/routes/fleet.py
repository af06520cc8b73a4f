from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bev.common.v1 import common_pb2
from bev.monitoring.v1 import monitoring_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import to_json


def router(clients: Clients) -> APIRouter:
    api = APIRouter()

    async def fleet() -> monitoring_pb2.FleetHealthResponse:
        return await clients.monitoring.FleetHealth(monitoring_pb2.FleetHealthRequest(timeout_s=1.0), timeout_s=10)

    @api.get("/healthz", tags=["fleet"])
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
