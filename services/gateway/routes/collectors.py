from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator
from typing_extensions import TypeAliasType

from bev.collectors.v1 import collectors_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import TLP_LABELS, Body, Int, tlp_value, to_json

# The collectors service's bounds (services/collectors: graph.MAX_DEPTH, GraphConfig.max_rows and
# max_neighborhood by default); the service checks its configured ones again.
MAX_DEPTH = 3
MAX_ROWS = 1000
MAX_IDS = 1000
STIX_ID = r"^[a-z0-9-]+--\S+$"
PARAMETER_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAP_KEY = r"^[^`]+$"


class ExtractBody(Body):
    text: str
    scrub_pii: bool = False


class CollectBody(Body):
    target_type: str
    target: str
    investigation_id: str = ""
    opsec: bool = False
    tlp: str = Field(default="", json_schema_extra=TLP_LABELS,
                     description='clear, green, amber, amber+strict, red ("TLP:AMBER" too); empty: the service\'s default')
    confidence: Int = Field(default=0, ge=0, le=100, description="0: the collector's default")


if TYPE_CHECKING:
    CypherValue = Any
else:
    # A query parameter's value: JSON, with map keys the graph takes (not empty, no backtick).
    CypherValue = TypeAliasType(
        "CypherValue",
        bool | int | float | str | list["CypherValue"]
        | Annotated[dict[Annotated[str, Field(pattern=MAP_KEY)], "CypherValue"],
                    Field(json_schema_extra={"additionalProperties": False})]
        | None,
    )


class GraphQueryBody(Body):
    cypher: str = Field(pattern=r"\S", description="a read-only Cypher query; parameters as $name")
    params: dict[Annotated[str, Field(pattern=PARAMETER_NAME)], CypherValue] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False},
        description="the query's $parameters by name (a letter or _, then letters, digits, _); values are "
                    "JSON whose object keys are not empty and have no backtick")

    @field_validator("params", mode="wrap")
    @classmethod
    def _params(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> dict[str, Any]:
        try:
            params: dict[str, Any] = handler(value)
        except ValidationError as exc:  # one line, not one per JSON type the value failed to be
            first = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
            raise ValueError(f"a parameter name is a letter or _, then letters, digits and _; its value is JSON "
                             f"whose object keys are not empty and have no backtick (see {first!r})") from None
        return params
    limit: Int = Field(default=0, ge=0, le=MAX_ROWS, description="most rows returned; 0: 100")


class ExportBody(Body):
    entity_ids: list[str] = Field(min_length=1, max_length=MAX_IDS)
    depth: Int = Field(default=0, ge=0, le=MAX_DEPTH, description="0: the entities and the relations between them")


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["collectors"])

    @api.post("/api/v1/indicators/extract")
    async def extract(body: ExtractBody) -> dict[str, Any]:
        return to_json(await clients.collectors.Extract(
            collectors_pb2.ExtractRequest(text=body.text, scrub_pii=body.scrub_pii)))

    @api.get("/api/v1/collectors")
    async def list_collectors() -> dict[str, Any]:
        return to_json(await clients.collectors.ListCollectors(collectors_pb2.ListCollectorsRequest()))

    @api.post("/api/v1/collectors/{name}/collect", responses={
        403: {"description": "The target is refused (a private address, or out of scope)"},
        404: {"description": "No such collector (GET /api/v1/collectors lists them)"}})
    async def collect(name: str, body: CollectBody) -> dict[str, Any]:
        request = collectors_pb2.CollectRequest(collector=name, **body.model_dump(exclude={"tlp"}),
                                                tlp=tlp_value(body.tlp))
        observations = [to_json(obs) async for obs in clients.collectors.Collect(request)]
        return {"observations": observations}

    @api.get("/api/v1/graph/entities/{entity_id}", responses={404: {"description": "No such entity"}})
    async def entity(entity_id: Annotated[str, Path(description="a STIX id (type--uuid); the service answers 400 "
                                                             "for anything else", json_schema_extra={"pattern": STIX_ID})],
                     ) -> dict[str, Any]:
        return to_json(await clients.collectors.GetEntity(collectors_pb2.GetEntityRequest(id=entity_id)))

    @api.get("/api/v1/graph/neighborhood", responses={404: {"description": "No such entity"}})
    async def neighborhood(entity_id: str, depth: Annotated[int, Query(ge=1, le=MAX_DEPTH)] = 1,
                           limit: Annotated[int, Query(ge=0, le=MAX_ROWS, description="0: 200")] = 0,
                           ) -> dict[str, Any]:
        return to_json(await clients.collectors.Neighborhood(
            collectors_pb2.NeighborhoodRequest(entity_id=entity_id, depth=depth, limit=limit)))

    @api.post("/api/v1/graph/query")
    async def graph_query(body: GraphQueryBody) -> dict[str, Any]:
        response = await clients.collectors.GraphQuery(collectors_pb2.GraphQueryRequest(
            cypher=body.cypher, params_json=json.dumps(body.params), limit=body.limit))
        return {"columns": list(response.columns), "rows": [json.loads(row) for row in response.rows_json],
                "truncated": response.truncated}

    @api.post("/api/v1/graph/export", responses={404: {"description": "None of the entities is in the graph"}})
    async def export(body: ExportBody) -> dict[str, Any]:
        response = await clients.collectors.ExportStix(
            collectors_pb2.ExportStixRequest(entity_ids=body.entity_ids, depth=body.depth))
        bundle: dict[str, Any] = json.loads(response.bundle_json)
        return bundle

    return api
