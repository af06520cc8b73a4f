"""The analysts' HTTP API. Every route is a typed RPC over NATS to the service that owns the work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, Field

from bev.avatar.v1 import avatar_pb2
from bev.avatar.v1.avatar_rpc import AvatarClient
from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.monitoring.v1 import monitoring_pb2
from bev.monitoring.v1.monitoring_rpc import MonitoringClient
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import RpcError, StatusCode
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmClient
from services.gateway.settings import GatewayConfig

HTTP_STATUS = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.FAILED_PRECONDITION: 409,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}


def _json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class GenerateBody(BaseModel):
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] = []


class EmbedBody(BaseModel):
    texts: list[str] = Field(min_length=1)
    model: str = ""


class ExtractBody(BaseModel):
    text: str


class AvatarStateBody(BaseModel):
    session_id: str = Field(min_length=1)
    state: str = Field(description="idle, collecting, analyzing, hypothesizing, debating, reporting, alert, error")
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    severity: float | None = Field(default=None, ge=0.0, le=1.0)
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    personality: str = ""


def create_app(nc: NatsClient, config: GatewayConfig) -> FastAPI:
    app = FastAPI(title="BEV gateway", version="0.1.0")
    timeout = config.rpc_timeout_s
    reasoning = ReasoningClient.over_nats(nc, timeout_s=timeout)
    embeddings = EmbeddingsClient.over_nats(nc, timeout_s=timeout)
    collectors = CollectorsClient.over_nats(nc, timeout_s=timeout)
    swarm = SwarmClient.over_nats(nc, timeout_s=timeout)
    avatar = AvatarClient.over_nats(nc, timeout_s=timeout)
    monitoring = MonitoringClient.over_nats(nc, timeout_s=timeout)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Content-Length is checked before reading; chunked bodies are counted as they arrive.
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            return JSONResponse({"error": f"body over {config.max_body_bytes} bytes"}, status_code=413)
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > config.max_body_bytes:
                    return JSONResponse({"error": f"body over {config.max_body_bytes} bytes"}, status_code=413)
            request._body = body  # let the route read what was already consumed
        return await call_next(request)

    @app.exception_handler(RpcError)
    async def rpc_error(_: Request, exc: RpcError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.message, "code": exc.code.name}, status_code=HTTP_STATUS.get(exc.code, 502)
        )

    async def fleet() -> monitoring_pb2.FleetHealthResponse:
        return await monitoring.FleetHealth(monitoring_pb2.FleetHealthRequest(timeout_s=1.0), timeout_s=10)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        health = await fleet()
        serving = health.status == common_pb2.HealthResponse.STATUS_SERVING
        body = {
            "status": "serving" if serving else "degraded",
            "missing": list(health.missing),
            "services": sorted({i.service for i in health.instances}),
        }
        return JSONResponse(body, status_code=200 if serving else 503)

    @app.get("/api/v1/services")
    async def services() -> dict[str, Any]:
        return _json(await fleet())

    @app.post("/api/v1/reasoning/generate")
    async def generate(body: GenerateBody) -> dict[str, Any]:
        request = reasoning_pb2.GenerateRequest(
            prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature, stop=body.stop
        )
        return _json(await reasoning.Generate(request))

    @app.post("/api/v1/embeddings/embed")
    async def embed(body: EmbedBody) -> dict[str, Any]:
        return _json(await embeddings.Embed(embeddings_pb2.EmbedRequest(texts=body.texts, model=body.model)))

    @app.post("/api/v1/indicators/extract")
    async def extract(body: ExtractBody) -> dict[str, Any]:
        return _json(await collectors.Extract(collectors_pb2.ExtractRequest(text=body.text)))

    @app.get("/api/v1/swarm/roles")
    async def roles(phase: str = Query(default="", description="ingestion, hypotheses, correlation, counterfactuals, synthesis")) -> dict[str, Any]:
        try:
            value = swarm_pb2.Phase.Value(f"PHASE_{phase.upper()}") if phase else swarm_pb2.PHASE_UNSPECIFIED
        except ValueError:
            return JSONResponse({"error": f"unknown phase {phase!r}"}, status_code=400)  # type: ignore[return-value]
        return _json(await swarm.ListRoles(swarm_pb2.ListRolesRequest(phase=value)))

    @app.post("/api/v1/avatar/state")
    async def avatar_state(body: AvatarStateBody) -> dict[str, Any]:
        try:
            state = avatar_pb2.ResearchState.Value(f"RESEARCH_STATE_{body.state.upper()}")
        except ValueError:
            return JSONResponse({"error": f"unknown state {body.state!r}"}, status_code=400)  # type: ignore[return-value]
        request = avatar_pb2.MapStateRequest(session_id=body.session_id, state=state, personality=body.personality)
        for name in ("confidence", "severity", "progress"):
            value = getattr(body, name)
            if value is not None:
                setattr(request, name, value)
        return _json(await avatar.MapState(request))

    return app
