"""The fleet's health: /healthz (open, for load balancers and `make run`) and the instance list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bev.common.v1 import common_pb2
from bev.monitoring.v1 import monitoring_pb2
from services.gateway.clients import Clients
from services.gateway.deps import READ, ClientsDep
from services.gateway.routes.common import ERROR_SCHEMA, Limit, PageCursor, paged, to_json

router = APIRouter(tags=["fleet"])

HEALTH = {"type": "object", "required": ["status", "missing", "services"], "properties": {
    "status": {"enum": ["serving", "degraded"]}, "missing": {"type": "array", "items": {"type": "string"}},
    "services": {"type": "array", "items": {"type": "string"}}}}

_SERVICES_EXAMPLE = {
    "status": "STATUS_SERVING", "missing": [], "next_cursor": "",
    "instances": [{"service": "reasoning", "instance": "reasoning-3f2a", "node": "thanos", "status": "STATUS_SERVING",
                   "uptime_s": 5231.4, "requests": "1830", "errors": "2", "rpc_rate": 0.8,
                   "grpc_address": "100.64.0.2:50053", "metrics_address": "100.64.0.2:9103", "checks": [],
                   "error": ""}]}


async def _fleet(clients: Clients) -> monitoring_pb2.FleetHealthResponse:
    return await clients.monitoring.FleetHealth(monitoring_pb2.FleetHealthRequest(timeout_s=1.0), timeout_s=10)


@router.get("/healthz", responses={
    200: {"description": "Every service has a serving instance", "content": {"application/json": {"schema": HEALTH}}},
    503: {"description": "A service has no serving instance (`missing` names it), or monitoring cannot be reached",
          "content": {"application/json": {"schema": {"anyOf": [HEALTH, ERROR_SCHEMA]}}}}})
async def healthz(clients: ClientsDep) -> JSONResponse:
    """Fleet health over NATS: 200 when every service has a serving instance, else 503. Needs no key."""
    health = await _fleet(clients)
    serving = health.status == common_pb2.HealthResponse.STATUS_SERVING
    body = {
        "status": "serving" if serving else "degraded",
        "missing": list(health.missing),
        "services": sorted({i.service for i in health.instances}),
    }
    return JSONResponse(body, status_code=200 if serving else 503)


@router.get("/api/v1/services", dependencies=[READ], responses={
    200: {"description": "The fleet's status and a page of its instances",
          "content": {"application/json": {"example": _SERVICES_EXAMPLE}}}})
async def services(clients: ClientsDep, limit: Limit = 100, cursor: PageCursor = "") -> dict[str, Any]:
    """Every service instance (by service, then instance id): node, state, uptime, request and error
    counts, addresses; the fleet's status and the services with no instance on every page."""
    health = await _fleet(clients)
    page, next_cursor = paged(health.instances, lambda i: f"{i.service}\x00{i.instance}", limit, cursor)
    body = to_json(health)
    body["instances"] = [to_json(instance) for instance in page]
    body["next_cursor"] = next_cursor
    return body
