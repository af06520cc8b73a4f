"""Reasoning: chat and generation routed over OpenAI-protocol backends by tier; the 5-phase analysis.

Every engine is an HTTP backend (services/reasoning/backends.py), the embedded llama.cpp too: the
service starts llama.cpp's OpenAI server as its child (decision 0005) and adds it to the tier table.

Draining is per replica: each reasoning process routes with its own Router, so DrainBackend takes a
backend out of the routing of the replica that answers it only. Monitoring drains a backend fleet-wide
by calling every replica by its instance (a client over `NatsTransport(nc, instance=...)`, the
instances from discovery), and RouterStatus likewise reports one replica. A drain is not persisted:
a restarted replica routes to every backend again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from bev.common.v1 import common_pb2
from bev.engines import EngineStartError
from bev.engines.llama_server import LlamaServer
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningServicer
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.runtime import ServiceRuntime, StartupError
from bev.secrets import SecretsUnavailable
from bev.telemetry import get_logger
from bev.vocab import Tier, UnknownTier
from services.reasoning.analysis import Analysis
from services.reasoning.backends import Backend, ChatParams
from services.reasoning.router import Router
from services.reasoning.settings import BackendConfig, ReasoningConfig, Settings

log = get_logger(__name__)

EMBEDDED_BACKEND = "llama.cpp"
ROLES = ("system", "user", "assistant")


def requested_tier(value: int, default: Tier) -> Tier:
    """The tier a request's `common_pb2.Tier` names; TIER_UNSPECIFIED = `default`."""
    try:
        return Tier.from_proto(value, default)
    except UnknownTier as exc:
        raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None


EMBEDDED_POLL_S = 1.0
EMBEDDED_FIRST_BACKOFF_S = 0.5
EMBEDDED_MAX_BACKOFF_S = 30.0


class Reasoning(ReasoningServicer):
    def __init__(self, info: InstanceInfo, config: ReasoningConfig, router: Router, http: httpx.AsyncClient,
                 embedded: LlamaServer | None = None) -> None:
        super().__init__(info)
        self.config = config
        self.router = router
        self.analysis = Analysis(router, self.config.analyze)
        self._http = http
        self._embedded = embedded
        self._prober: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prober = asyncio.create_task(self.router.probe_forever(self.config.health_interval_s))
        if self._embedded is not None:
            self._keeper = asyncio.create_task(self._keep_embedded_running(self._embedded))

    async def _keep_embedded_running(self, engine: LlamaServer) -> None:
        """The embedded llama.cpp server is this service's own engine: if it dies (a grammar it
        cannot build has crashed it before), start it again on the same port, with backoff. The
        router's probes mark it down meanwhile and fail requests over to other backends."""
        delay = EMBEDDED_FIRST_BACKOFF_S
        while True:
            await asyncio.sleep(EMBEDDED_POLL_S)
            code = engine.exit_code()
            if code is None:
                continue
            log.error("embedded llama.cpp server exited; restarting", code=code, last_log=engine.log_tail())
            while True:
                await asyncio.sleep(delay)
                try:
                    await asyncio.to_thread(engine.start, self.config.embedded.start_timeout_s)
                except EngineStartError as exc:
                    delay = min(EMBEDDED_MAX_BACKOFF_S, delay * 2)
                    log.error("embedded llama.cpp server restart failed; retrying", error=str(exc), retry_in_s=delay)
                    continue
                log.info("embedded llama.cpp server restarted", pid=engine.pid)
                delay = EMBEDDED_FIRST_BACKOFF_S
                await self.router.probe_all()
                break

    async def close(self) -> None:
        for task in (self._prober, self._keeper):
            if task is not None:
                task.cancel()
        await self._http.aclose()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        return [
            common_pb2.HealthCheck(
                name=f"backend:{b.name}", ok=b.healthy,
                detail="; ".join(filter(None, (
                    f"{b.tier} {b.config.model} at {b.config.url}" if b.healthy else b.last_error, b.drain_text()))),
            )
            for b in self.router.backends
        ]

    # -- requests ------------------------------------------------------------------------------

    def _params(self, request: reasoning_pb2.ChatRequest) -> tuple[ChatParams, Tier, str]:
        """Validated chat parameters, tier and model filter (a tier name as model picks the tier)."""
        if not request.messages:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "messages must not be empty")
        for index, message in enumerate(request.messages):
            if message.role not in ROLES:
                raise RpcError(StatusCode.INVALID_ARGUMENT,
                               f"message {index}: role must be one of {', '.join(ROLES)}, got {message.role!r}")
        if request.max_tokens < 0 or request.max_tokens > self.config.max_tokens_limit:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"max_tokens must be within 0..{self.config.max_tokens_limit}")
        if not 0.0 <= request.temperature <= 2.0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "temperature must be within 0..2")
        if not 0.0 <= request.top_p <= 1.0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "top_p must be within 0..1")
        schema: dict[str, Any] | None = None
        if request.json_schema:
            try:
                schema = json.loads(request.json_schema)
            except ValueError as exc:
                raise RpcError(StatusCode.INVALID_ARGUMENT, f"json_schema is not JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise RpcError(StatusCode.INVALID_ARGUMENT, "json_schema must be a JSON object")
        tier = requested_tier(request.tier, self.config.default_tier)
        model = request.model
        if model in Tier.ordered():
            tier, model = Tier(model), ""
        elif model:
            serving = [b for b in self.router.backends if model in (b.config.model, b.name)]
            if not serving:
                raise RpcError(StatusCode.NOT_FOUND, f"model {model!r} is not served here; ListModels lists them")
            if request.tier == common_pb2.TIER_UNSPECIFIED:
                tier = max((b.tier for b in serving), key=lambda t: t.rank)
        params = ChatParams(
            messages=[{"role": m.role, "content": m.content} for m in request.messages],
            max_tokens=request.max_tokens or self.config.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=[stop for stop in request.stop if stop],
            json_schema=schema,
        )
        return params, tier, model

    @staticmethod
    def _chat_request(request: reasoning_pb2.GenerateRequest) -> reasoning_pb2.ChatRequest:
        if not request.prompt:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "prompt is empty")
        return reasoning_pb2.ChatRequest(
            messages=[reasoning_pb2.ChatMessage(role="user", content=request.prompt)],
            max_tokens=request.max_tokens, temperature=request.temperature, stop=request.stop,
            tier=request.tier, session_id=request.session_id,
        )

    async def Chat(self, request: reasoning_pb2.ChatRequest, ctx: CallContext) -> reasoning_pb2.ChatResponse:
        params, tier, model = self._params(request)
        result, routed = await self.router.complete(params, tier, request.session_id, model)
        return reasoning_pb2.ChatResponse(
            text=result.text, model=result.model, finish_reason=result.finish_reason,
            usage=reasoning_pb2.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
            backend=routed.backend.name, tier=routed.backend.tier.to_proto(),
        )

    async def ChatStream(self, request: reasoning_pb2.ChatRequest,
                         ctx: CallContext) -> AsyncIterator[reasoning_pb2.ChatChunk]:
        params, tier, model = self._params(request)
        first = True
        async for delta, routed in self.router.stream(params, tier, request.session_id, model):
            chunk = reasoning_pb2.ChatChunk(text=delta.text)
            if first or delta.finish_reason:
                chunk.backend = routed.backend.name
                chunk.model = routed.backend.config.model
                chunk.tier = routed.backend.tier.to_proto()
                first = False
            if delta.finish_reason:
                chunk.done = True
                chunk.finish_reason = delta.finish_reason
                chunk.usage.prompt_tokens = delta.prompt_tokens
                chunk.usage.completion_tokens = delta.completion_tokens
            yield chunk

    async def Generate(self, request: reasoning_pb2.GenerateRequest, ctx: CallContext) -> reasoning_pb2.GenerateResponse:
        answer = await self.Chat(self._chat_request(request), ctx)
        return reasoning_pb2.GenerateResponse(
            text=answer.text, model=answer.model, finish_reason=answer.finish_reason, usage=answer.usage,
            backend=answer.backend,
        )

    async def GenerateStream(self, request: reasoning_pb2.GenerateRequest,
                             ctx: CallContext) -> AsyncIterator[reasoning_pb2.GenerateChunk]:
        async for chunk in self.ChatStream(self._chat_request(request), ctx):
            yield reasoning_pb2.GenerateChunk(text=chunk.text, done=chunk.done, finish_reason=chunk.finish_reason,
                                              usage=chunk.usage)

    async def Analyze(self, request: reasoning_pb2.AnalyzeRequest, ctx: CallContext) -> reasoning_pb2.AnalyzeResponse:
        return await self.analysis.run(request, requested_tier(request.tier, self.config.default_tier))

    async def ListModels(self, request: reasoning_pb2.ListModelsRequest,
                         ctx: CallContext) -> reasoning_pb2.ListModelsResponse:
        return reasoning_pb2.ListModelsResponse(models=[
            reasoning_pb2.ModelInfo(
                name=b.config.model, tier=b.tier.to_proto(), backend=b.name,
                context_length=b.context_length, node=b.config.node, healthy=b.healthy,
            )
            for b in self.router.backends
        ])

    async def RouterStatus(self, request: reasoning_pb2.RouterStatusRequest,
                           ctx: CallContext) -> reasoning_pb2.RouterStatusResponse:
        return router_status(self.router)

    async def DrainBackend(self, request: reasoning_pb2.DrainBackendRequest,
                           ctx: CallContext) -> reasoning_pb2.DrainBackendResponse:
        """Drain (seconds > 0) or undrain (seconds = 0) a backend in this replica's router only."""
        backend = self.router.drain(request.backend, request.seconds, request.reason)
        return reasoning_pb2.DrainBackendResponse(backend=backend_status(backend))


def backend_status(b: Backend) -> reasoning_pb2.BackendStatus:
    return reasoning_pb2.BackendStatus(
        name=b.name, tier=b.tier.to_proto(), node=b.config.node, url=b.config.url,
        model=b.config.model, healthy=b.healthy, last_error=b.last_error, in_flight=b.in_flight,
        queued=b.queued, max_in_flight=b.config.max_in_flight, max_queued=b.config.max_queued,
        engine_waiting=b.engine_waiting, kv_cache_usage=b.kv_cache_usage, requests=b.requests,
        failures=b.failures, rejected=b.rejected, context_length=b.context_length, kind=b.config.kind,
        drained_until=b.drained_until, drained_reason=b.drained_reason,
    )


def router_status(router: Router) -> reasoning_pb2.RouterStatusResponse:
    return reasoning_pb2.RouterStatusResponse(
        backends=[backend_status(b) for b in router.backends],
        default_tier=router.default_tier.to_proto(),
        failovers=router.failovers,
        tier_fallbacks=router.tier_fallbacks,
    )


def tier_table(config: ReasoningConfig, node: str) -> list[BackendConfig]:
    """The configured backends plus one per vLLM endpoint (vLLM serves the tier name as its model)."""
    table = list(config.backends)
    for tier, url in config.vllm_endpoints.items():
        table.append(BackendConfig(name=f"vllm-{tier}", tier=tier, url=url.rstrip("/"), model=tier.value, kind="vllm"))
    return table


def embedded_backend(config: ReasoningConfig, server: LlamaServer, node: str) -> BackendConfig:
    return BackendConfig(
        name=EMBEDDED_BACKEND, tier=config.embedded.tier, url=server.base_url, model=server.model_alias,
        kind="llamacpp", node=node, context_length=server.n_ctx,
        max_in_flight=1,  # llama-cpp-python's server decodes one request at a time
        max_queued=config.embedded.max_queued,
    )


def open_backends(config: ReasoningConfig, table: list[BackendConfig], http: httpx.AsyncClient,
                  api_keys: dict[str, str]) -> list[Backend]:
    return [
        Backend(entry, http, api_key=api_keys.get(entry.name, ""), connect_timeout_s=config.connect_timeout_s,
                request_timeout_s=config.request_timeout_s)
        for entry in table
    ]


def http_client() -> httpx.AsyncClient:
    # trust_env=False: an HTTP proxy in the environment must not sit between us and the engines.
    return httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))


async def assemble(info: InstanceInfo, config: ReasoningConfig, backends: list[BackendConfig],
                   api_keys: Mapping[str, str], data_dir: Path) -> Reasoning:
    """The service from its config and dependencies: `backends` are the engines to route over (the
    tier table, or a test's own engines), `api_keys` their keys by backend name. Starts the embedded
    llama.cpp server when the config enables it. The service and its tests start it this way; any
    failure is a StartupError with one line."""
    table = list(backends)
    embedded: LlamaServer | None = None
    if config.embedded.enabled:
        embedded = LlamaServer(
            data_dir / "llama-server", model_path=config.embedded.model_path,
            n_ctx=config.embedded.n_ctx, n_threads=config.embedded.n_threads,
        )
        try:
            await asyncio.to_thread(embedded.start, config.embedded.start_timeout_s)
        except EngineStartError as exc:
            raise StartupError(f"embedded llama.cpp server: {exc}") from None
        table.append(embedded_backend(config, embedded, info.node))
    if not table:
        raise StartupError("no inference backend: set BEV_REASONING__BACKENDS or BEV_REASONING__VLLM_ENDPOINTS, "
                           "or enable the embedded llama.cpp server")
    http = http_client()
    router = Router(open_backends(config, table, http, dict(api_keys)), config.default_tier, config.affinity_sessions)
    await router.probe_all()
    for backend in router.backends:
        log.info("backend", name=backend.name, tier=backend.tier, url=backend.config.url,
                 healthy=backend.healthy, error=backend.last_error)
    return Reasoning(info, config, router, http, embedded)


async def build(runtime: ServiceRuntime[Settings]) -> Reasoning:
    """Read the service's secrets (API keys of engines that need one), then assemble it."""
    config = runtime.settings.reasoning
    table = tier_table(config, runtime.settings.node)
    api_keys: dict[str, str] = {}
    for entry in table:
        if entry.api_key_secret:
            try:
                secret = await asyncio.to_thread(runtime.secrets.read, entry.api_key_secret)
            except SecretsUnavailable as exc:
                raise StartupError(f"backend {entry.name}: cannot read its API key: {exc}") from None
            if not secret.get("api_key"):
                raise StartupError(f"backend {entry.name}: Vault secret {entry.api_key_secret!r} has no api_key")
            api_keys[entry.name] = str(secret["api_key"])
    return await assemble(runtime.info, config, table, api_keys, runtime.settings.data_dir)
