"""The swarm over HTTP: investigations (start, list, look at, cancel, follow live, reports), the
evidence reports cite, the agents at work and their roles. Every route is a Swarm RPC over NATS.

Enums are lower-case labels both ways: mode "hybrid", status "budget_exhausted", phase "ingestion",
TLP "amber". Timestamps are ISO 8601 in UTC ("2026-01-02T03:04:05Z"), null while unset.

Following an investigation: GET .../events is Server-Sent Events (`id:` the event id, `event:` its
kind, `data:` the event as JSON); a client that reconnects with `Last-Event-ID` (browsers do) or
`?after=N` gets what came after it. A comment (`: keep-alive`) goes out every HEARTBEAT_S while
nothing happens, so that proxies and clients keep an idle stream open. The stream ends after the
`done` event. The WebSocket at .../events/ws sends the same events as JSON text messages.

The SSE stream is a plain StreamingResponse: the framing is four lines of code, it needs no package
the gateway's core install lacks (sse-starlette comes only with the reasoning extra), and the
pump-and-queue shape is the one the OpenAI chat stream uses (services/gateway/routes/openai.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, TypeAlias, cast
from urllib.parse import quote

from fastapi import APIRouter, Header, HTTPException, Query, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf.message import Message
from pydantic import ConfigDict, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bev.rpc import RpcError, StatusCode
from bev.swarm.v1 import swarm_pb2
from bev.telemetry import get_logger
from bev.vocab import Tlp, UnknownTlp
from services.gateway.clients import Clients
from services.gateway.routes.common import (
    HTTP_STATUS,
    INTEGRAL,
    TLP_LABELS,
    Body,
    enum_value,
    error_response,
    labels,
    tlp_value,
    to_json,
)

log = get_logger(__name__)


def _labels_of(names: list[str], prefix: str) -> list[str]:
    return [name.removeprefix(prefix).lower() for name in names if name != f"{prefix}UNSPECIFIED"]


PHASES = _labels_of(list(swarm_pb2.Phase.keys()), "PHASE_")
MODES = _labels_of(list(swarm_pb2.Mode.keys()), "MODE_")
STATUSES = _labels_of(list(swarm_pb2.Status.keys()), "STATUS_")
TARGET_TYPES = ("domain", "url", "ipv4", "email", "btc", "eth", "md5", "sha1", "sha256", "threat-actor", "malware")

# The API's bounds on a budget (0 in the RPC: the service's default, so 0 is not taken here).
MAX_TOOL_CALLS = 10_000
MAX_BUDGET_TOKENS = 10_000_000
MAX_WALL_S = 86_400.0
MAX_DEPTH = 5
MAX_ALLOW = 100
MAX_SEEDS = 20
MAX_TARGET = 2048
MAX_LIST = 500  # ListInvestigations' own ceiling
INT64_MAX = 2**63 - 1

HEARTBEAT_S = 15.0  # an SSE comment this often while no event comes
WS_RESUME_WAIT_S = 1.0  # how long a WebSocket waits for {"after": N} before starting from the first event
# WatchInvestigation is reopened after the last event it sent when it ends with one of these: its
# deadline (one hour) passed, or the replica streaming it went away (another one takes over). After
# this many tries in a row that each failed within REOPEN_FAST_S, the stream reports the error.
REOPEN_CODES = frozenset({StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE})
REOPEN_TRIES = 3
# The swarm sends a heartbeat every few seconds while an investigation is quiet (services/swarm
# servicer.WATCH_HEARTBEAT_S); a stream silent this long is from a replica that died: reopen it.
WATCH_IDLE_S = 15.0
REOPEN_FAST_S = 30.0

_ID = "{investigation_id}"
INVESTIGATION_PATH = f"/api/v1/investigations/{_ID}"
Responses = dict[int | str, dict[str, Any]]
_NOT_FOUND: Responses = {404: {"description": "No investigation by that id"}}
_NO_REPORT: Responses = {409: {"description": "No report yet: the investigation has not finished"}}
_SSE_RESPONSES: Responses = {
    200: {"description": "Server-Sent Events until the `done` event: `id:` (the event id), `event:` (its kind), "
                         "`data:` ({id, investigation_id, kind, at, data}); `: keep-alive` comments while idle; "
                         "a `stream_error` event ({error, code}) if the stream breaks",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **_NOT_FOUND,
}


class StrictBody(Body):
    """A strict body that also refuses fields it does not know (a misspelt budget key is an error,
    not a silently unbounded investigation)."""

    model_config = ConfigDict(extra="forbid")


class BudgetBody(StrictBody):
    max_tool_calls: Annotated[int, Field(ge=1, le=MAX_TOOL_CALLS), INTEGRAL] | None = Field(
        default=None, description="most collector and service calls; unset: the service's default")
    max_tokens: Annotated[int, Field(ge=1, le=MAX_BUDGET_TOKENS), INTEGRAL] | None = Field(
        default=None, description="most model tokens, prompts and answers; unset: the service's default")
    max_wall_s: Annotated[float, Field(gt=0, le=MAX_WALL_S)] | None = Field(
        default=None, description="most seconds from start to report; unset: the service's default")
    max_depth: Annotated[int, Field(ge=1, le=MAX_DEPTH), INTEGRAL] | None = Field(
        default=None, description="most pivots away from the target (domain -> IP is one); unset: the service's default")


class ScopeBody(StrictBody):
    allow: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default=[], max_length=MAX_ALLOW,
        description="domains (with their subdomains) and CIDRs tool calls may touch; empty: the target's "
                    "registrable domain and hosts its pages name")
    opsec: bool = Field(default=False, description="no direct connection: every fetch goes through Tor")


class StartBody(StrictBody):
    target: str = Field(min_length=1, max_length=MAX_TARGET, pattern=r"\S",
                        description="what to investigate: a domain, URL, IPv4, e-mail, wallet, hash, actor or malware name")
    target_type: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description=f"one of {', '.join(TARGET_TYPES)}; unset or empty: inferred from the target")
    mode: str = Field(default="hybrid", json_schema_extra=labels(*MODES),
                      description="how the agents coordinate: " + ", ".join(MODES) + " (any case)")
    budget: BudgetBody = Field(default_factory=BudgetBody)
    scope: ScopeBody = Field(default_factory=ScopeBody)
    tlp: str = Field(default="clear", json_schema_extra=TLP_LABELS,
                     description='clear, green, amber, amber+strict, red ("TLP:AMBER" too); empty: the service\'s default')
    seeds: list[Annotated[str, Field(max_length=MAX_TARGET, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")]] = Field(
        default=[], max_length=MAX_SEEDS, description="further starting points (URLs), each checked against the scope")


def _label(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def _enum_label(enum: Any, prefix: str, value: int) -> str | None:
    """PHASE_INGESTION -> "ingestion"; UNSPECIFIED -> None; a value newer than this gateway -> its number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return None if name == f"{prefix}UNSPECIFIED" else _label(name, prefix)


def parse_label(enum: Any, prefix: str, known: list[str], label: str, what: str) -> Any:
    """A label from a request -> the wire enum; 400 naming the valid labels otherwise."""
    if label.strip().lower() not in known:
        raise HTTPException(400, f"unknown {what} {label!r}; use one of {', '.join(known)}")
    return enum_value(enum, prefix, label.strip().lower(), what)


def _time(message: Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    return None if stamp.seconds == 0 and stamp.nanos == 0 else str(stamp.ToJsonString())


def _tlp_label(value: int) -> str:
    try:
        tlp = Tlp.from_proto(value)
    except UnknownTlp:
        return str(value)
    return tlp.value if tlp is not None else ""


def _json_object(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise RpcError(StatusCode.INTERNAL, f"the swarm sent {what} that is not JSON") from None


def investigation_json(investigation: swarm_pb2.Investigation) -> dict[str, Any]:
    """An investigation as the API shows it (the report parsed; null until it finishes)."""
    i, budget = investigation, investigation.budget
    return {
        "id": i.id, "target": i.target, "target_type": i.target_type,
        "mode": _enum_label(swarm_pb2.Mode, "MODE_", i.mode) or "hybrid",  # unspecified means hybrid
        "status": _enum_label(swarm_pb2.Status, "STATUS_", i.status),
        "phase": _enum_label(swarm_pb2.Phase, "PHASE_", i.phase),
        "progress": i.progress,
        "created_at": _time(i, "created_at"), "started_at": _time(i, "started_at"),
        "finished_at": _time(i, "finished_at"),
        "usage": {"tokens": i.usage.tokens, "tool_calls": i.usage.tool_calls, "wall_s": i.usage.wall_s},
        "budget": {"max_tool_calls": budget.max_tool_calls, "max_tokens": budget.max_tokens,
                   "max_wall_s": budget.max_wall_s, "max_depth": budget.max_depth},
        "scope": {"allow": list(i.scope.allow), "opsec": i.scope.opsec},
        "tlp": _tlp_label(i.tlp),
        "seeds": list(i.seeds),
        "error": i.error or None,
        "report": _json_object(i.report_json, "a report") if i.report_json else None,
    }


def event_json(event: swarm_pb2.InvestigationEvent) -> dict[str, Any]:
    data: Any = {}
    if event.data_json:
        try:
            data = json.loads(event.data_json)
        except ValueError:
            data = {"text": event.data_json}  # shown as it came rather than dropped
    return {"id": event.id, "investigation_id": event.investigation_id, "kind": event.kind,
            "at": _time(event, "at"), "data": data}


def _role_json(role: swarm_pb2.AgentRole) -> dict[str, Any]:
    return {"name": role.name, "description": role.description,
            "phases": [_enum_label(swarm_pb2.Phase, "PHASE_", p) for p in role.phases],
            "tools": list(role.tools), "can_vote": role.can_vote}


def _dumps(value: Any) -> str:
    # ASCII: no text a service stored (a lone surrogate) can fail to encode on the way out.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def sse_frame(event: swarm_pb2.InvestigationEvent) -> bytes:
    kind = "".join(event.kind.split()) or "message"  # a line break in a kind would end the frame
    return f"id: {event.id}\nevent: {kind}\ndata: {_dumps(event_json(event))}\n\n".encode("ascii")


Item: TypeAlias = swarm_pb2.InvestigationEvent | RpcError | None


async def _pump(clients: Clients, investigation_id: str, after: int, queue: asyncio.Queue[Item]) -> None:
    """WatchInvestigation from `after` into `queue` until the `done` event or the stream's end (then
    None); reopened after the last event when its deadline passes or its replica goes (REOPEN_CODES).
    A failure ends it as an RpcError item. Unbounded: one investigation's events, which a slow client
    would otherwise lose to NATS's slow-consumer limit."""
    last, tries = after, 0
    try:
        while True:
            opened = time.monotonic()
            stream = cast(AsyncGenerator[swarm_pb2.InvestigationEvent, None], clients.swarm.WatchInvestigation(
                swarm_pb2.WatchInvestigationRequest(id=investigation_id, after_id=last)))
            try:
                while True:
                    try:  # the swarm sends a heartbeat while idle: silence means its replica died
                        event = await asyncio.wait_for(anext(stream), WATCH_IDLE_S)
                    except StopAsyncIteration:
                        return  # the service ended it: the investigation is over
                    except TimeoutError:
                        raise RpcError(StatusCode.UNAVAILABLE, f"no event or heartbeat for {WATCH_IDLE_S:.0f} s") from None
                    if event.kind == "heartbeat" or (event.id <= last and last):
                        continue  # liveness only, or a reopened stream's overlap
                    queue.put_nowait(event)
                    last, tries = event.id, 0
                    if event.kind == "done":
                        return
            except RpcError as exc:
                tries = 1 if time.monotonic() - opened > REOPEN_FAST_S else tries + 1
                if exc.code not in REOPEN_CODES or tries > REOPEN_TRIES:
                    queue.put_nowait(exc)
                    return
                log.info("reopening an investigation's event stream", investigation=investigation_id,
                         after=last, code=exc.code.name)
                await asyncio.sleep(0.5 * tries)
            finally:
                await stream.aclose()
    except Exception as exc:  # a bug or a transport fault: reported to the client, logged here
        log.exception("investigation event stream failed", investigation=investigation_id, error=repr(exc))
        queue.put_nowait(RpcError(StatusCode.INTERNAL, f"the event stream failed: {exc}"))
    finally:
        queue.put_nowait(None)


async def watch(clients: Clients, investigation_id: str, after: int,
                heartbeat_s: float | None) -> AsyncGenerator[swarm_pb2.InvestigationEvent | RpcError | str, None]:
    """The investigation's events after `after`, then an RpcError if the stream broke; "heartbeat"
    after every `heartbeat_s` without one. Closing it (a client that left) stops the RPC stream."""
    queue: asyncio.Queue[Item] = asyncio.Queue()
    pump = asyncio.create_task(_pump(clients, investigation_id, after, queue))
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield "heartbeat"
                continue
            if item is None:
                return
            yield item
            if isinstance(item, RpcError):
                return
    finally:
        pump.cancel()  # its own `finally` closes the RPC stream (the service stops sending)


def _resume_point(last_event_id: str | None, after: int) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    text = last_event_id.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or int(text) > INT64_MAX:
        raise HTTPException(400, f"Last-Event-ID {last_event_id!r} is not an event id (a number)")
    return int(text)


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["swarm"])

    @api.get("/api/v1/swarm/roles")
    async def roles(
        phase: Annotated[str, Query(description="ingestion, hypotheses, correlation, counterfactuals, synthesis "
                                                "(any case); empty: every phase",
                                    json_schema_extra=labels("", *PHASES))] = "",
    ) -> dict[str, Any]:
        value = enum_value(swarm_pb2.Phase, "PHASE_", phase, "phase") if phase else swarm_pb2.PHASE_UNSPECIFIED
        return to_json(await clients.swarm.ListRoles(swarm_pb2.ListRolesRequest(phase=value)))

    @api.post("/api/v1/investigations", status_code=202, responses={
        202: {"description": "Queued: the investigation, its `Location` header its URL",
              "headers": {"Location": {"description": "/api/v1/investigations/{id}", "schema": {"type": "string"}}}},
        400: {"description": "A mode or TLP label the API does not know, a target whose type cannot be inferred, "
                             "or a target or seed that the scope excludes"}})
    async def start_investigation(body: StartBody) -> JSONResponse:
        """Start an investigation of `target`; it runs in the background (follow it at
        GET /api/v1/investigations/{id}/events). Budget fields left out take the service's defaults."""
        budget = body.budget
        request = swarm_pb2.StartInvestigationRequest(
            target=body.target, target_type=(body.target_type or "").strip(),
            mode=parse_label(swarm_pb2.Mode, "MODE_", MODES, body.mode, "mode"),
            budget=swarm_pb2.Budget(max_tool_calls=budget.max_tool_calls or 0, max_tokens=budget.max_tokens or 0,
                                    max_wall_s=budget.max_wall_s or 0.0, max_depth=budget.max_depth or 0),
            scope=swarm_pb2.Scope(allow=body.scope.allow, opsec=body.scope.opsec),
            tlp=tlp_value(body.tlp), seeds=body.seeds,
        )
        investigation = await clients.swarm.StartInvestigation(request)
        return JSONResponse(investigation_json(investigation), status_code=202,
                            headers={"Location": f"/api/v1/investigations/{quote(investigation.id, safe='')}"})

    @api.get("/api/v1/investigations", responses={400: {"description": "An unknown status label, or a bad cursor"}})
    async def list_investigations(
        status: Annotated[str, Query(description=", ".join(STATUSES) + " (any case); empty: any",
                                     json_schema_extra=labels("", *STATUSES))] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
        cursor: Annotated[str, Query(max_length=1024, description="`next_cursor` of the previous page")] = "",
    ) -> dict[str, Any]:
        """Newest first, without reports; `next_cursor` is null on the last page."""
        value = parse_label(swarm_pb2.Status, "STATUS_", STATUSES, status, "status") if status.strip() \
            else swarm_pb2.STATUS_UNSPECIFIED
        page = await clients.swarm.ListInvestigations(
            swarm_pb2.ListInvestigationsRequest(status=value, limit=limit, cursor=cursor))
        return {"investigations": [investigation_json(i) for i in page.investigations],
                "next_cursor": page.next_cursor or None}

    @api.get(INVESTIGATION_PATH, responses=_NOT_FOUND)
    async def get_investigation(investigation_id: str) -> dict[str, Any]:
        """Status, phase, progress (0..1), usage against the budget, and the report (JSON) once finished."""
        return investigation_json(await clients.swarm.GetInvestigation(
            swarm_pb2.GetInvestigationRequest(id=investigation_id)))

    @api.delete(INVESTIGATION_PATH, responses=_NOT_FOUND)
    async def cancel_investigation(investigation_id: str) -> dict[str, Any]:
        """Stop it within seconds, keeping the partial report; a finished one is left as it is."""
        return investigation_json(await clients.swarm.CancelInvestigation(
            swarm_pb2.CancelInvestigationRequest(id=investigation_id)))

    async def report(investigation_id: str, kind: swarm_pb2.ReportFormat.ValueType) -> str:
        answer = await clients.swarm.GetReport(swarm_pb2.GetReportRequest(id=investigation_id, format=kind))
        return str(answer.content)

    @api.get(f"{INVESTIGATION_PATH}/report", responses={**_NOT_FOUND, **_NO_REPORT})
    async def report_json(investigation_id: str) -> dict[str, Any]:
        """The report: findings, each claim citing evidence ids (GET /api/v1/evidence/{id})."""
        content = _json_object(await report(investigation_id, swarm_pb2.REPORT_FORMAT_JSON), "a report")
        if not isinstance(content, dict):
            raise RpcError(StatusCode.INTERNAL, "the swarm sent a report that is not a JSON object")
        return content

    @api.get(f"{INVESTIGATION_PATH}/report.md", response_class=Response, responses={
        200: {"description": "The report as Markdown", "content": {"text/markdown": {"schema": {"type": "string"}}}},
        **_NOT_FOUND, **_NO_REPORT})
    async def report_markdown(investigation_id: str) -> Response:
        return Response(await report(investigation_id, swarm_pb2.REPORT_FORMAT_MARKDOWN),
                        media_type="text/markdown; charset=utf-8")

    @api.get(f"{INVESTIGATION_PATH}/report.stix", response_class=Response, responses={
        200: {"description": "The report as a STIX 2.1 bundle",
              "content": {"application/stix+json": {"schema": {"type": "object"}}}},
        **_NOT_FOUND, **_NO_REPORT})
    async def report_stix(investigation_id: str) -> Response:
        return Response(await report(investigation_id, swarm_pb2.REPORT_FORMAT_STIX), media_type="application/stix+json")

    @api.get(f"{INVESTIGATION_PATH}/events", response_class=StreamingResponse, responses=_SSE_RESPONSES)
    async def events(
        investigation_id: str,
        after: Annotated[int, Query(ge=0, le=INT64_MAX, description="only events after this id")] = 0,
        last_event_id: Annotated[str | None, Header(
            alias="Last-Event-ID", description="what an SSE client resends on reconnecting: wins over `after`")] = None,
    ) -> StreamingResponse:
        """The investigation's events, from the first (or after `Last-Event-ID` / `after`) to `done`."""
        resume = _resume_point(last_event_id, after)
        # Asked first so that an unknown id or an absent swarm is a status (404, 503), not a broken stream.
        await clients.swarm.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation_id))

        async def frames() -> AsyncIterator[bytes]:
            stream = watch(clients, investigation_id, resume, HEARTBEAT_S)
            try:
                async for item in stream:
                    if isinstance(item, str):
                        yield b": keep-alive\n\n"
                    elif isinstance(item, RpcError):
                        yield f"event: stream_error\ndata: {_dumps({'error': item.message, 'code': item.code.name})}\n\n" \
                            .encode("ascii")
                    else:
                        yield sse_frame(item)
            finally:
                await stream.aclose()

        return StreamingResponse(frames(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @api.websocket(f"{INVESTIGATION_PATH}/events/ws")
    async def events_ws(websocket: WebSocket, investigation_id: str) -> None:
        """The same events as JSON text messages; send {"after": N} within WS_RESUME_WAIT_S of
        connecting to resume after event N. Closed (1000) after `done`; a broken stream sends
        {"error", "code"} and closes with 1011 (1013 when the swarm is unavailable)."""
        try:
            await clients.swarm.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation_id))
        except RpcError as exc:
            denial = error_response(websocket.url.path, HTTP_STATUS.get(exc.code, 502), exc.message, code=exc.code.name)
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(denial)  # the client sees the HTTP status
            else:
                await websocket.accept()
                await websocket.send_text(bytes(denial.body).decode("ascii"))
                await websocket.close(1008 if exc.code is StatusCode.NOT_FOUND else 1011)
            return
        await websocket.accept()
        after = 0
        try:
            first = await asyncio.wait_for(websocket.receive(), WS_RESUME_WAIT_S)
        except TimeoutError:
            first = None
        if first is not None:
            if first["type"] == "websocket.disconnect":
                return
            try:
                after = _ws_after(first.get("text") or first.get("bytes") or b"")
            except ValueError as exc:
                await websocket.send_text(_dumps({"error": str(exc), "code": "INVALID_ARGUMENT"}))
                await websocket.close(1008)
                return

        async def send_events() -> None:
            stream = watch(clients, investigation_id, after, None)
            try:
                async for item in stream:
                    if isinstance(item, RpcError):
                        await websocket.send_text(_dumps({"error": item.message, "code": item.code.name}))
                        await websocket.close(1013 if item.code is StatusCode.UNAVAILABLE else 1011)
                        return
                    if isinstance(item, swarm_pb2.InvestigationEvent):
                        await websocket.send_text(_dumps(event_json(item)))
                await websocket.close(1000)
            finally:
                await stream.aclose()

        async def until_disconnect() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # later messages are ignored

        sender, listener = asyncio.create_task(send_events()), asyncio.create_task(until_disconnect())
        try:
            await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, listener):
                task.cancel()
            for task in (sender, listener):
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                log.warning("investigation WebSocket failed", investigation=investigation_id,
                            error=repr(sender.exception()))
            if websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await websocket.close(1000)

    @api.get("/api/v1/evidence/{evidence_id}", responses={404: {"description": "No evidence by that id"}})
    async def evidence(evidence_id: str) -> dict[str, Any]:
        """One stored evidence item, what a report's citation resolves to: an observation, or an
        excerpt (`content` = the corpus document's text[start:end])."""
        e = await clients.swarm.GetEvidence(swarm_pb2.GetEvidenceRequest(id=evidence_id))
        return {"id": e.id, "investigation_id": e.investigation_id, "kind": e.kind, "uri": e.uri,
                "collector": e.collector, "collected_at": _time(e, "collected_at"), "tlp": _tlp_label(e.tlp),
                "content": e.content, "document_id": e.document_id or None, "start": e.start, "end": e.end}

    @api.get("/api/v1/agents")
    async def agents() -> dict[str, Any]:
        """The roles investigations staff, and each agent working now: its role, investigation,
        activity, since when, and the swarm replica running it."""
        answer = await clients.swarm.ListAgents(swarm_pb2.ListAgentsRequest())
        return {"roles": [_role_json(role) for role in answer.roles],
                "agents": [{"id": a.id, "role": a.role, "investigation_id": a.investigation_id, "activity": a.activity,
                            "since": _time(a, "since"), "instance": a.instance} for a in answer.agents]}

    return api


def _ws_after(message: str | bytes) -> int:
    """{"after": N} -> N; ValueError saying what is expected otherwise."""
    expected = 'the first message may only be {"after": N}, N the id of the last event seen (0 or more)'
    try:
        data = json.loads(message)
    except ValueError:
        raise ValueError(expected) from None
    if not isinstance(data, dict) or set(data) != {"after"}:
        raise ValueError(expected)
    after = data["after"]
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= INT64_MAX:
        raise ValueError(expected)
    return after
