from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from bev.collectors.v1 import collectors_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import tlp_value, to_json


class ExtractBody(BaseModel):
    text: str
    scrub_pii: bool = False


class CollectBody(BaseModel):
    target_type: str
    target: str
    investigation_id: str = ""
    opsec: bool = False
    tlp: str = ""  # clear, green, amber, amber+strict, red ("TLP:AMBER" too); empty = the service's default
    confidence: int = Field(default=0, ge=0, le=100)


class GraphQueryBody(BaseModel):
    cypher: str
    params: dict[str, Any] = {}
    limit: int = Field(default=0, ge=0)


class ExportBody(BaseModel):
    entity_ids: list[str] = Field(min_length=1)
    depth: int = Field(default=0, ge=0)


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["collectors"])

    @api.post("/api/v1/indicators/extract")
    async def extract(body: ExtractBody) -> dict[str, Any]:
        return to_json(await clients.collectors.Extract(
            collectors_pb2.ExtractRequest(text=body.text, scrub_pii=body.scrub_pii)))

    @api.get("/api/v1/collectors")
    async def list_collectors() -> dict[str, Any]:
        return to_json(await clients.collectors.ListCollectors(collectors_pb2.ListCollectorsRequest()))

    @api.post("/api/v1/collectors/{name}/collect")
    async def collect(name: str, body: CollectBody) -> dict[str, Any]:
        request = collectors_pb2.CollectRequest(collector=name, **body.model_dump(exclude={"tlp"}),
                                                tlp=tlp_value(body.tlp))
        observations = [to_json(obs) async for obs in clients.collectors.Collect(request)]
        return {"observations": observations}

    @api.get("/api/v1/graph/entities/{entity_id}")
    async def entity(entity_id: str) -> dict[str, Any]:
        return to_json(await clients.collectors.GetEntity(collectors_pb2.GetEntityRequest(id=entity_id)))

    @api.get("/api/v1/graph/neighborhood")
    async def neighborhood(entity_id: str, depth: int = Query(default=1, ge=1),
                           limit: int = Query(default=0, ge=0)) -> dict[str, Any]:
        return to_json(await clients.collectors.Neighborhood(
            collectors_pb2.NeighborhoodRequest(entity_id=entity_id, depth=depth, limit=limit)))

    @api.post("/api/v1/graph/query")
    async def graph_query(body: GraphQueryBody) -> dict[str, Any]:
        response = await clients.collectors.GraphQuery(collectors_pb2.GraphQueryRequest(
            cypher=body.cypher, params_json=json.dumps(body.params), limit=body.limit))
        return {"columns": list(response.columns), "rows": [json.loads(row) for row in response.rows_json],
                "truncated": response.truncated}

    @api.post("/api/v1/graph/export")
    async def export(body: ExportBody) -> dict[str, Any]:
        response = await clients.collectors.ExportStix(
            collectors_pb2.ExportStixRequest(entity_ids=body.entity_ids, depth=body.depth))
        bundle: dict[str, Any] = json.loads(response.bundle_json)
        return bundle

    return api
