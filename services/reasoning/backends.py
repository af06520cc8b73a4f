"""One OpenAI-protocol client for every inference engine (vLLM, llama.cpp's server, ollama, a hosted
provider): chat completions, streamed or not, over one shared httpx connection pool; plus the state
the router reads (health, load, counters) and the bounded queue in front of each backend.

Engines differ only in configuration: `kind` says how a JSON schema is passed (vLLM and OpenAI:
`response_format: json_schema`; llama-cpp-python: `json_object` with `schema`) and where load comes
from (vLLM's /metrics; otherwise our own in-flight count).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from bev.vocab import Tier
from services.reasoning import metrics
from services.reasoning.settings import BackendConfig

DEFAULT_CONTEXT_LENGTH = 2048  # when neither the table nor the engine says
ERROR_CHARS = 300


class BackendFailed(Exception):
    """Connect error, 5xx, timeout or a broken answer: the router fails over to another backend."""


class BackendRejected(Exception):
    """The engine refused the request itself (4xx): another backend would refuse it too."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BackendFull(Exception):
    """Every slot and queue place of the backend is taken."""


@dataclass
class ChatParams:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 0.0  # 0 = engine default
    stop: list[str] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass
class Delta:
    """A streamed piece; the last one has `finish_reason` (and usage when the engine reports it)."""

    text: str
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_CHARS else flat[: ERROR_CHARS - 3] + "..."


def _error_message(response: httpx.Response) -> str:
    """The engine's own error text: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or raw."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text) or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            error = error.get("message", error)
        return _one_line(str(error))
    return _one_line(str(body))


class Backend:
    """An engine behind the OpenAI HTTP API, with its health, load and queue."""

    def __init__(self, config: BackendConfig, http: httpx.AsyncClient, *, api_key: str = "",
                 connect_timeout_s: float = 3.0, request_timeout_s: float = 120.0) -> None:
        self.config = config
        self._http = http
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(request_timeout_s, connect=connect_timeout_s)
        self._probe_timeout = httpx.Timeout(max(connect_timeout_s, 2.0), connect=connect_timeout_s)
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self.healthy = False
        self.last_error = "not probed yet"
        self.context_length = config.context_length or DEFAULT_CONTEXT_LENGTH
        self.in_flight = 0
        self.queued = 0
        self.engine_waiting = 0.0
        self.kv_cache_usage = 0.0
        self.requests = 0
        self.failures = 0
        self.rejected = 0
        labels = {"tier": config.tier, "backend": config.name}
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(**labels)
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(**labels)
        self._busy_seconds = metrics.BUSY_SECONDS.labels(**labels)
        self._busy_since = 0.0  # perf_counter when in_flight went from 0 to 1
        self._healthy_gauge = metrics.HEALTHY.labels(**labels)
        self._healthy_gauge.set(0)
        self._drained_until = 0.0  # unix time; a drain ends by itself when it passes
        self._drained_reason = ""
        # Read at scrape time, so a drain that expired reads 0 without anyone undraining it.
        metrics.DRAINED.labels(**labels).set_function(lambda: 1.0 if self.drained() else 0.0)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tier(self) -> Tier:
        return self.config.tier

    def load(self) -> float:
        """Work per slot, ours and the engine's own queue, plus KV-cache pressure (vLLM)."""
        waiting = self.in_flight + self.queued + self.engine_waiting
        return waiting / self.config.max_in_flight + self.kv_cache_usage

    def drained(self) -> bool:
        return self._drained_until > time.time()

    @property
    def drained_until(self) -> float:
        """When the drain ends (unix time); 0 when the backend is in routing."""
        return self._drained_until if self.drained() else 0.0

    @property
    def drained_reason(self) -> str:
        return self._drained_reason if self.drained() else ""

    def drain(self, seconds: float, reason: str) -> None:
        """Keep new requests away for `seconds` (0 = back in routing now); those in flight finish."""
        self._drained_until = time.time() + seconds if seconds > 0 else 0.0
        self._drained_reason = reason if seconds > 0 else ""

    def routable(self) -> bool:
        """May take a new request: healthy and not drained."""
        return self.healthy and not self.drained()

    def drain_text(self) -> str:
        """'drained until <UTC time>: <reason>' while drained, else ''."""
        if not self.drained():
            return ""
        until = datetime.fromtimestamp(self._drained_until, UTC).isoformat(timespec="seconds")
        return f"drained until {until}: {self._drained_reason or 'no reason given'}"

    def has_room(self) -> bool:
        return self.in_flight < self.config.max_in_flight or self.queued < self.config.max_queued

    def mark_down(self, reason: str) -> None:
        self.healthy = False
        self.last_error = _one_line(reason)
        self._healthy_gauge.set(0)

    def mark_up(self) -> None:
        self.healthy = True
        self.last_error = ""
        self._healthy_gauge.set(1)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the backend's in-flight slots; wait in its bounded queue if none is free."""
        if not self.has_room():
            self.rejected += 1
            raise BackendFull(self.name)
        self.queued += 1
        self._queue_gauge.inc()
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
            self._queue_gauge.dec()
        if self.in_flight == 0:
            self._busy_since = time.perf_counter()
        self.in_flight += 1
        self._in_flight_gauge.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._in_flight_gauge.dec()
            if self.in_flight == 0:
                self._busy_seconds.inc(time.perf_counter() - self._busy_since)
            self._slots.release()

    # -- the OpenAI protocol ------------------------------------------------------------------

    def _body(self, params: ChatParams, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": params.messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": stream,
        }
        if params.top_p:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = params.stop
        if stream:
            body["stream_options"] = {"include_usage": True}  # llama-cpp-python ignores it
        if params.json_schema is not None:
            if self.config.kind == "llamacpp":
                body["response_format"] = {"type": "json_object", "schema": params.json_schema}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": params.json_schema, "strict": True},
                }
        return body

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 500:
            raise BackendFailed(f"HTTP {response.status_code}: {_error_message(response)}")
        if response.status_code == 429:  # the engine's own queue is full: another backend may take it
            raise BackendFailed(f"HTTP 429: {_error_message(response)}")
        if response.status_code >= 400:
            raise BackendRejected(response.status_code, _error_message(response))

    async def complete(self, params: ChatParams) -> Completion:
        try:
            response = await self._http.post(
                f"{self.config.url}/chat/completions", json=self._body(params, stream=False),
                headers=self._headers, timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise BackendFailed(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BackendFailed(f"{type(exc).__name__}: {exc}") from exc
        self._check(response)
        try:
            body = response.json()
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            completion = Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                model=self.config.model,  # llama.cpp answers with its file path
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendFailed(f"not an OpenAI chat completion: {_one_line(response.text)}") from exc
        self._count(completion.prompt_tokens, completion.completion_tokens)
        return completion

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        """Streamed pieces; completion tokens are counted from the pieces if the engine reports no usage."""
        pieces = 0
        finish = ""
        usage: dict[str, Any] = {}
        try:
            async with aconnect_sse(
                self._http, "POST", f"{self.config.url}/chat/completions",
                json=self._body(params, stream=True), headers=self._headers, timeout=self._timeout,
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    self._check(source.response)
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    chunk = json.loads(event.data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            pieces += 1
                            yield Delta(text)
        except httpx.TimeoutException as exc:
            raise BackendFailed(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BackendFailed(f"{type(exc).__name__}: {exc}") from exc
        except (SSEError, ValueError, AttributeError) as exc:
            raise BackendFailed(f"broken event stream: {exc}") from exc
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", pieces))
        self._count(prompt_tokens, completion_tokens)
        yield Delta("", finish or "stop", prompt_tokens, completion_tokens)

    def _count(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests += 1
        labels = {"tier": self.tier, "backend": self.name}
        metrics.REQUESTS.labels(**labels).inc()
        metrics.PROMPT_TOKENS.labels(**labels).inc(prompt_tokens)
        metrics.COMPLETION_TOKENS.labels(**labels).inc(completion_tokens)

    # -- health and load -------------------------------------------------------------------------

    async def probe(self) -> None:
        """Ask the engine for its models (health, context length) and, for vLLM, its load."""
        if self.config.kind == "llamacpp" and self.in_flight and self.healthy:
            # llama-cpp-python answers /v1/models only between generations; while one of ours runs,
            # its outcome is the health signal (a failure marks the backend down).
            return
        try:
            response = await self._http.get(
                f"{self.config.url}/models", headers=self._headers, timeout=self._probe_timeout
            )
            if response.status_code != 200:
                raise BackendFailed(f"GET /models: HTTP {response.status_code}: {_error_message(response)}")
            listed = response.json()
            if not isinstance(listed, dict) or not isinstance(listed.get("data"), list):
                raise BackendFailed("GET /models: not an OpenAI model list")
            models = {entry.get("id"): entry for entry in listed["data"] if isinstance(entry, dict)}
            if self.config.model not in models:
                raise BackendFailed(f"engine does not serve model {self.config.model!r} (it has {sorted(map(str, models))})")
            if not self.config.context_length:
                self.context_length = int(models[self.config.model].get("max_model_len") or self.context_length)
            if self.config.kind == "vllm":
                await self._read_vllm_load()
        except (httpx.TransportError, ValueError, BackendFailed) as exc:
            self.mark_down(f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackendFailed) else str(exc))
            return
        self.mark_up()

    async def _read_vllm_load(self) -> None:
        root = self.config.url.removesuffix("/").removesuffix("/v1")
        response = await self._http.get(f"{root}/metrics", timeout=self._probe_timeout)
        if response.status_code != 200:
            raise BackendFailed(f"GET /metrics: HTTP {response.status_code}")
        self.engine_waiting, self.kv_cache_usage = vllm_load(response.text)


def vllm_load(exposition: str) -> tuple[float, float]:
    """(requests waiting, KV-cache usage 0..1) from vLLM's Prometheus text; older vLLM names the
    cache metric gpu_cache_usage_perc. Summed over label sets (one per served model)."""
    waiting = usage = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "vllm:num_requests_waiting":
                waiting += sample.value
            elif sample.name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                usage = max(usage, sample.value)
    return waiting, usage
