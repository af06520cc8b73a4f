from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator
from typing_extensions import TypeAliasType

from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from bev.rpc import RpcError, StatusCode
from bev.vocab import Tlp
from services.gateway.deps import ADMIN, READ, WRITE, Caller, CallerDep, ClientsDep
from services.gateway.routes.common import TLP_LABELS, Body, Int, Limit, PageCursor, paged, tlp_value, to_json

# The collectors service's bounds (services/collectors: graph.MAX_DEPTH, GraphConfig.max_rows and
# max_neighborhood by default); the service checks its configured ones again.
MAX_DEPTH = 3
MAX_ROWS = 1000
MAX_IDS = 1000
STIX_ID = r"^[a-z0-9-]+--\S+$"
PARAMETER_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAP_KEY = r"^[^`]+$"

# Static malware analysis uploads: the raw file as the body, up to GatewayConfig.max_upload_bytes.
FILES_PATH = "/api/v1/files"

router = APIRouter(tags=["collectors"])


class ExtractBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"text": "C2 at hxxp://evil[.]ru/a, 203.0.113.9, CVE-2024-3094", "scrub_pii": False}]})

    text: str
    scrub_pii: bool = False


class CollectBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"target_type": "domain-name", "target": "browser-update.example.com", "tlp": "green"}]})

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
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"cypher": "MATCH (d:Entity {type: 'domain-name', value: $domain})-[r:REL]-(x:Entity) "
                   "RETURN x.type AS type, x.value AS value", "params": {"domain": "cdn-updates.example.net"},
         "limit": 100}]})

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
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"entity_ids": ["domain-name--6f0e2a3c-1b7d-5a9e-8c4f-2d1b0a9e8f7c"], "depth": 1}]})

    entity_ids: list[str] = Field(min_length=1, max_length=MAX_IDS)
    depth: Int = Field(default=0, ge=0, le=MAX_DEPTH, description="0: the entities and the relations between them")


@router.post("/api/v1/indicators/extract", dependencies=[READ], responses={
    200: {"description": "The indicators, defanged forms refanged",
          "content": {"application/json": {"example": {"scrubbed_text": "", "indicators": [
              {"type": "url", "value": "http://evil.ru/a", "unicode_value": ""},
              {"type": "domain", "value": "evil.ru", "unicode_value": ""},
              {"type": "ipv4", "value": "203.0.113.9", "unicode_value": ""},
              {"type": "cve", "value": "CVE-2024-3094", "unicode_value": ""}]}}}}})
async def extract(body: ExtractBody, clients: ClientsDep) -> dict[str, Any]:
    """Indicators of compromise in text (URLs, domains, addresses, hashes, CVEs, wallets); nothing is stored."""
    return to_json(await clients.collectors.Extract(
        collectors_pb2.ExtractRequest(text=body.text, scrub_pii=body.scrub_pii)))


@router.get("/api/v1/collectors", dependencies=[READ])
async def list_collectors(clients: ClientsDep, limit: Limit = 100, cursor: PageCursor = "") -> dict[str, Any]:
    """The collectors by name: what each takes and produces, its rate limit, whether it needs the network or Tor."""
    listed = await clients.collectors.ListCollectors(collectors_pb2.ListCollectorsRequest())
    page, next_cursor = paged(listed.collectors, lambda c: c.name, limit, cursor)
    return {"collectors": [to_json(c) for c in page], "next_cursor": next_cursor}


@router.post("/api/v1/collectors/{name}/collect", dependencies=[WRITE], responses={
    403: {"description": "The target is refused (a private address, or out of scope), or the TLP is above the key's"},
    404: {"description": "No such collector (GET /api/v1/collectors lists them)"}})
async def collect(name: str, body: CollectBody, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """Run one collector on a target; its observations are stored in the graph and returned."""
    tlp = _readable_tlp(body.tlp, caller)  # CollectRequest carries no Access
    request = collectors_pb2.CollectRequest(collector=name, **body.model_dump(exclude={"tlp"}), tlp=tlp)
    observations = [to_json(obs) async for obs in clients.collectors.Collect(request)]
    return {"observations": observations}


def _readable_tlp(label_text: str, caller: Caller) -> common_pb2.Tlp.ValueType:
    """The request's TLP, refused (403) when above what the key may read: the answer holds what was
    collected at this label, so a key may collect only at a label it may read."""
    tlp = tlp_value(label_text)
    label = Tlp.from_proto(tlp)
    if label is not None and not caller.may_read(label):
        raise HTTPException(403, f"this key reads at most TLP:{caller.max_tlp.value.upper()}; "
                                 f"it cannot collect at TLP:{label.value.upper()}")
    return tlp


@router.post(FILES_PATH, dependencies=[WRITE], openapi_extra={"requestBody": {
    "required": True, "description": "the file itself (any type), as the raw body",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}, responses={
    200: {"description": "The file's SHA-256 and what static analysis observed (stored in the graph)",
          "content": {"application/json": {"example": {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                                                       "size": 4, "observations": []}}}},
    403: {"description": "The TLP is above the key's"},
    413: {"description": "The file is over the upload limit"}})
async def analyze_file(request: Request, clients: ClientsDep, caller: CallerDep,
                       filename: Annotated[str, Query(max_length=255, description="its name (kept as a property, never a path)")] = "",
                       tlp: Annotated[str, Query(json_schema_extra=TLP_LABELS, description="empty: the service's default")] = "",
                       investigation_id: Annotated[str, Query(max_length=200)] = "") -> dict[str, Any]:
    """Static malware analysis of an uploaded file: kept in the collectors' quarantine (never
    executable, never run) and analysed (hashes, fuzzy hashes, type, PE/ELF structure, Office macros,
    strings and their indicators, YARA); what it observed is stored in the graph and returned."""
    content = await request.body()  # bounded by GatewayConfig.max_upload_bytes in the middleware (413)
    if not content:
        raise HTTPException(400, "the uploaded file is empty")
    label = _readable_tlp(tlp, caller)
    request_pb = collectors_pb2.AnalyzeFileRequest(content=content, filename=filename,
                                                   investigation_id=investigation_id, tlp=label)
    try:
        observations = [to_json(obs) async for obs in clients.collectors.AnalyzeFile(request_pb)]
    except RpcError as exc:
        if exc.code is StatusCode.RESOURCE_EXHAUSTED:  # the service's own size limit, below the gateway's
            raise HTTPException(413, exc.message) from None
        raise
    return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "observations": observations}


@router.get("/api/v1/graph/entities/{entity_id}", dependencies=[READ],
            responses={404: {"description": "No such entity (or none the key may read)"}})
async def entity(entity_id: Annotated[str, Path(description="a STIX id (type--uuid); the service answers 400 "
                                                         "for anything else", json_schema_extra={"pattern": STIX_ID})],
                 clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    return to_json(await clients.collectors.GetEntity(
        collectors_pb2.GetEntityRequest(id=entity_id, access=caller.access())))


@router.get("/api/v1/graph/neighborhood", dependencies=[READ],
            responses={404: {"description": "No such entity (or none the key may read)"}})
async def neighborhood(clients: ClientsDep, caller: CallerDep, entity_id: str,
                       depth: Annotated[int, Query(ge=1, le=MAX_DEPTH)] = 1,
                       limit: Annotated[int, Query(ge=0, le=MAX_ROWS, description="0: 200")] = 0,
                       ) -> dict[str, Any]:
    """The entities and relations within `depth` hops of an entity, those above the key's TLP left out."""
    return to_json(await clients.collectors.Neighborhood(
        collectors_pb2.NeighborhoodRequest(entity_id=entity_id, depth=depth, limit=limit, access=caller.access())))


@router.post("/api/v1/graph/query", dependencies=[ADMIN], responses={
    200: {"description": "The rows, as JSON values per column",
          "content": {"application/json": {"example": {
              "columns": ["type", "value"], "rows": [["ipv4-addr", "203.0.113.9"]], "truncated": False}}}}})
async def graph_query(body: GraphQueryBody, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """A raw read-only Cypher query: admin keys only, since its answer cannot be filtered by team or TLP."""
    response = await clients.collectors.GraphQuery(collectors_pb2.GraphQueryRequest(
        cypher=body.cypher, params_json=json.dumps(body.params), limit=body.limit, access=caller.access()))
    return {"columns": list(response.columns), "rows": [json.loads(row) for row in response.rows_json],
            "truncated": response.truncated}


@router.post("/api/v1/graph/export", dependencies=[READ],
             responses={404: {"description": "None of the entities is in the graph (or the key may read none)"}})
async def export(body: ExportBody, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """A STIX 2.1 bundle of the entities (and their neighbours to `depth`) the key may read."""
    response = await clients.collectors.ExportStix(
        collectors_pb2.ExportStixRequest(entity_ids=body.entity_ids, depth=body.depth, access=caller.access()))
    bundle: dict[str, Any] = json.loads(response.bundle_json)
    return bundle
