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
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal, TypeAlias, cast
from urllib.parse import quote

from fastapi import APIRouter, Header, HTTPException, Query, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf.message import Message
from pydantic import ConfigDict, Discriminator, Field, Tag

from bev.common.v1 import common_pb2
from bev.rpc import RpcError, StatusCode
from bev.swarm.v1 import swarm_pb2
from bev.telemetry import get_logger
from bev.vocab import Tlp, UnknownTlp
from services.gateway.clients import Clients
from services.gateway.deps import (
    READ,
    WRITE,
    Caller,
    CallerDep,
    ClientsDep,
    accept_websocket,
    refuse_websocket,
    refused_without_read,
    serve_websocket,
)
from services.gateway.routes.common import (
    HTTP_STATUS,
    INTEGRAL,
    MAX_TOKENS,
    TIER_LABELS,
    TLP_LABELS,
    Body,
    Cursor,
    Limit,
    PageCursor,
    enum_value,
    labels,
    paged,
    tlp_value,
    to_json,
)

log = get_logger(__name__)

router = APIRouter(tags=["swarm"])


def _labels_of(names: list[str], prefix: str) -> list[str]:
    return [name.removeprefix(prefix).lower() for name in names if name != f"{prefix}UNSPECIFIED"]


PHASES = _labels_of(list(swarm_pb2.Phase.keys()), "PHASE_")
MODES = _labels_of(list(swarm_pb2.Mode.keys()), "MODE_")
STATUSES = _labels_of(list(swarm_pb2.Status.keys()), "STATUS_")
WORKFLOW_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
TARGET_TYPES = ("domain", "url", "ipv4", "email", "btc", "eth", "md5", "sha1", "sha256", "threat-actor", "malware",
                "account")

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
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"target": "browser-update.example.com", "mode": "hybrid", "tlp": "amber",
         "scope": {"allow": ["example.com", "203.0.113.0/24"], "opsec": False},
         "budget": {"max_tool_calls": 200, "max_wall_s": 1800, "max_depth": 2},
         "seeds": ["https://browser-update.example.com/update.html"]}]})

    target: str = Field(min_length=1, max_length=MAX_TARGET, pattern=r"\S",
                        description="what to investigate: a domain, URL, IPv4, e-mail, wallet, hash, social account, actor or malware name")
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


# -- workflows: the bounds are the swarm's own (services/swarm/dag.py), which checks them again
# along with what a schema cannot say (dependencies on existing steps, no cycle, templates naming
# only steps depended on, tool arguments, the scope of a Collect target).

WORKFLOW_PATH = "/api/v1/workflows/{workflow_id}"
MAX_WORKFLOW_STEPS = 50
MAX_TEMPLATE = 50_000
MAX_FILE_BYTES = 128 * 1024
STEP_ID = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
WORKFLOW_TOOLS = ("collectors.Extract", "collectors.Collect", "collectors.Neighborhood", "collectors.GraphQuery",
                  "embeddings.Search")
StepIdField = Annotated[str, Field(pattern=STEP_ID)]
_TEMPLATE_NOTE = " (a template: {{step}} is that step's output, {{step.key.0}} a part of it)"


class StepBody(StrictBody):
    id: str = Field(pattern=STEP_ID, description="unique in the workflow; other steps name it in depends_on "
                                                 "and in templates ({{id}})")
    depends_on: list[StepIdField] = Field(default=[], max_length=MAX_WORKFLOW_STEPS,
                                          description="the steps this one runs after; their outputs are what "
                                                      "it may read")
    description: str = Field(default="", max_length=1000)


class LlmStepBody(StepBody):
    """reasoning.Chat of the prompt; the output is the text."""

    type: Literal["llm_generation"]
    prompt: str = Field(min_length=1, max_length=MAX_TEMPLATE, description="the user message" + _TEMPLATE_NOTE)
    system: str = Field(default="", max_length=MAX_TEMPLATE, description="a system message" + _TEMPLATE_NOTE)
    tier: str = Field(default="", json_schema_extra=TIER_LABELS,
                      description="fast, balanced, powerful (any case); empty: the swarm's tier")
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS), INTEGRAL] = 256
    temperature: float = Field(default=0.2, ge=0, le=2)


class ToolStepBody(StepBody):
    """One allowlisted RPC. args per tool: collectors.Extract {text, scrub_pii}; collectors.Collect
    {collector, target, target_type, opsec, tlp} (the target is checked against the workflow's scope);
    collectors.Neighborhood {entity_id, depth, limit}; collectors.GraphQuery {cypher, params, limit};
    embeddings.Search {query, k, mode, investigation_id}. String values are templates."""

    type: Literal["tool_execution"]
    tool: str = Field(json_schema_extra=labels(*WORKFLOW_TOOLS), description="one of " + ", ".join(WORKFLOW_TOOLS))
    args: dict[str, Any] = Field(default={}, description="the tool's arguments (see above)")


class ExtractStepBody(StepBody):
    """collectors.Extract of the text; the output is [{type, value}] (defanged forms refanged)."""

    type: Literal["data_processing"]
    operation: Literal["extract_indicators"]
    text: str = Field(min_length=1, max_length=MAX_TEMPLATE, description="the text" + _TEMPLATE_NOTE)
    scrub_pii: bool = Field(default=False, description="replace e-mails, phone, card and social-security numbers first")


class FilterStepBody(StepBody):
    """The items of step `input`'s list output that have `field` and, when given, whose field
    equals `equals` and/or contains `contains`; the output is the items kept."""

    type: Literal["data_processing"]
    operation: Literal["filter"]
    input: str = Field(pattern=STEP_ID, description="the step whose list output is filtered")
    field: str = Field(min_length=1, max_length=200, description='a dotted path into each item: "type", "entity.value"')
    equals: str | int | float | bool | None = Field(default=None, description="keep items whose field is this value")
    contains: str | None = Field(default=None, max_length=1000,
                                 description="keep items whose field holds this text (or, a list, this element)")
    ignore_case: bool = False


class MergeStepBody(StepBody):
    """The list outputs of `inputs`, one after the other; the output is the merged list."""

    type: Literal["data_processing"]
    operation: Literal["merge"]
    inputs: list[StepIdField] = Field(min_length=1, max_length=MAX_WORKFLOW_STEPS)
    dedupe: bool = Field(default=True, description="drop items equal to one before")


_PATH_NOTE = "relative to the workflow's folder (<data_dir>/workflows/<id>/); absolute paths, .. and links out are refused"


class ReadStepBody(StepBody):
    """The output is the file's text."""

    type: Literal["file_operations"]
    operation: Literal["read"]
    path: str = Field(min_length=1, max_length=1024, description=_PATH_NOTE)


class WriteStepBody(StepBody):
    """The output is {path, bytes}."""

    type: Literal["file_operations"]
    operation: Literal["write"]
    path: str = Field(min_length=1, max_length=1024, description=_PATH_NOTE)
    content: str = Field(max_length=MAX_FILE_BYTES, description="the text to write" + _TEMPLATE_NOTE)


class ListStepBody(StepBody):
    """The output is [{path, type, bytes}]."""

    type: Literal["file_operations"]
    operation: Literal["list"]
    path: str = Field(default="", max_length=1024, description="a folder; empty: the workflow's whole folder")


def _step_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    operation = value.get("operation") if isinstance(value, dict) else getattr(value, "operation", None)
    if not isinstance(kind, str):
        return None
    return f"{kind}:{operation}" if kind in ("data_processing", "file_operations") else kind


WorkflowStepBody = Annotated[
    Annotated[LlmStepBody, Tag("llm_generation")] | Annotated[ToolStepBody, Tag("tool_execution")]
    | Annotated[ExtractStepBody, Tag("data_processing:extract_indicators")]
    | Annotated[FilterStepBody, Tag("data_processing:filter")]
    | Annotated[MergeStepBody, Tag("data_processing:merge")]
    | Annotated[ReadStepBody, Tag("file_operations:read")] | Annotated[WriteStepBody, Tag("file_operations:write")]
    | Annotated[ListStepBody, Tag("file_operations:list")],
    Discriminator(_step_tag)]


class WorkflowScopeBody(StrictBody):
    allow: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default=[], max_length=MAX_ALLOW,
        description="domains and CIDRs collectors.Collect steps may reach; empty: each target's own registrable "
                    "domain or address")


class WorkflowBody(StrictBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "triage", "steps": [
        {"id": "iocs", "type": "data_processing", "operation": "extract_indicators",
         "text": "beacon to hxxp://evil[.]example[.]com/p"},
        {"id": "domains", "type": "data_processing", "operation": "filter", "depends_on": ["iocs"], "input": "iocs",
         "field": "type", "equals": "domain"},
        {"id": "summary", "type": "llm_generation", "depends_on": ["domains"], "prompt": "Summarise: {{domains}}",
         "max_tokens": 64},
        {"id": "save", "type": "file_operations", "operation": "write", "depends_on": ["summary"],
         "path": "summary.txt", "content": "{{summary}}"}]}]})

    name: str = Field(default="", max_length=200)
    scope: WorkflowScopeBody = Field(default_factory=WorkflowScopeBody)
    steps: list[WorkflowStepBody] = Field(min_length=1, max_length=MAX_WORKFLOW_STEPS,
                                          description="the DAG: each step runs after the steps it depends_on")


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


def workflow_json(w: swarm_pb2.Workflow) -> dict[str, Any]:
    """A workflow as the API shows it: the spec and each step's output parsed (null while unset and in lists)."""
    return {
        "id": w.id, "name": w.name, "status": _enum_label(swarm_pb2.Status, "STATUS_", w.status),
        "progress": w.progress, "error": w.error or None, "cancel_requested": w.cancel_requested,
        "created_at": _time(w, "created_at"), "started_at": _time(w, "started_at"),
        "finished_at": _time(w, "finished_at"),
        "spec": _json_object(w.spec_json, "a workflow spec") if w.spec_json else None,
        "steps": [{"id": s.id, "type": s.type, "depends_on": list(s.depends_on), "status": s.status,
                   "output": _json_object(s.output_json, "a step output") if s.output_json else None,
                   "error": s.error or None, "started_at": _time(s, "started_at"),
                   "finished_at": _time(s, "finished_at")} for s in w.steps],
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


async def _pump(clients: Clients, access: common_pb2.Access, investigation_id: str, after: int,
                queue: asyncio.Queue[Item]) -> None:
    """WatchInvestigation from `after` into `queue` until the `done` event or the stream's end (then
    None); reopened after the last event when its deadline passes or its replica goes (REOPEN_CODES).
    A failure ends it as an RpcError item. Unbounded: one investigation's events, which a slow client
    would otherwise lose to NATS's slow-consumer limit."""
    last, tries = after, 0
    try:
        while True:
            opened = time.monotonic()
            stream = cast(AsyncGenerator[swarm_pb2.InvestigationEvent, None], clients.swarm.WatchInvestigation(
                swarm_pb2.WatchInvestigationRequest(id=investigation_id, after_id=last, access=access)))
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


async def watch(clients: Clients, access: common_pb2.Access, investigation_id: str, after: int,
                heartbeat_s: float | None) -> AsyncGenerator[swarm_pb2.InvestigationEvent | RpcError | str, None]:
    """The investigation's events after `after`, then an RpcError if the stream broke; "heartbeat"
    after every `heartbeat_s` without one. Closing it (a client that left) stops the RPC stream."""
    queue: asyncio.Queue[Item] = asyncio.Queue()
    pump = asyncio.create_task(_pump(clients, access, investigation_id, after, queue))
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


_INVESTIGATION_EXAMPLE = {
    "id": "5b0f3e8e-7c1d-4b7a-9a61-0e2f4c9d1a33", "target": "browser-update.example.com", "target_type": "domain",
    "mode": "hybrid", "status": "running", "phase": "correlation", "progress": 0.55,
    "created_at": "2026-12-01T10:00:00Z", "started_at": "2026-12-01T10:00:01Z", "finished_at": None,
    "usage": {"tokens": 8210, "tool_calls": 21, "wall_s": 41.7},
    "budget": {"max_tool_calls": 200, "max_tokens": 200000, "max_wall_s": 1800.0, "max_depth": 2},
    "scope": {"allow": ["example.com"], "opsec": False}, "tlp": "amber", "seeds": [], "error": None, "report": None}
_WORKFLOW_EXAMPLE = {
    "id": "wf-2c9d41", "name": "triage", "status": "completed", "progress": 1.0, "error": None, "cancel_requested": False,
    "created_at": "2026-12-01T10:00:00Z", "started_at": "2026-12-01T10:00:00Z", "finished_at": "2026-12-01T10:00:04Z",
    "spec": None,
    "steps": [{"id": "iocs", "type": "data_processing", "depends_on": [], "status": "completed",
               "output": [{"type": "domain", "value": "evil.example.com"}], "error": None,
               "started_at": "2026-12-01T10:00:00Z", "finished_at": "2026-12-01T10:00:01Z"}]}


def _example(value: Any, description: str = "") -> dict[str, Any]:
    return {"description": description or "Successful Response", "content": {"application/json": {"example": value}}}


@router.get("/api/v1/swarm/roles", dependencies=[READ])
async def roles(
    clients: ClientsDep,
    phase: Annotated[str, Query(description="ingestion, hypotheses, correlation, counterfactuals, synthesis "
                                            "(any case); empty: every phase",
                                json_schema_extra=labels("", *PHASES))] = "",
    limit: Limit = 100, cursor: PageCursor = "",
) -> dict[str, Any]:
    """The roles investigations staff (by name): what each does, in which phases, with which tools."""
    value = enum_value(swarm_pb2.Phase, "PHASE_", phase, "phase") if phase else swarm_pb2.PHASE_UNSPECIFIED
    listed = await clients.swarm.ListRoles(swarm_pb2.ListRolesRequest(phase=value))
    page, next_cursor = paged(listed.roles, lambda role: role.name, limit, cursor)
    return {"roles": [to_json(role) for role in page], "next_cursor": next_cursor}


@router.post("/api/v1/investigations", status_code=202, dependencies=[WRITE], responses={
    202: {**_example(_INVESTIGATION_EXAMPLE | {"status": "queued", "phase": None, "progress": 0.0, "started_at": None,
                                               "usage": {"tokens": 0, "tool_calls": 0, "wall_s": 0.0}},
                     "Queued: the investigation, its `Location` header its URL"),
          "headers": {"Location": {"description": "/api/v1/investigations/{id}", "schema": {"type": "string"}}}},
    400: {"description": "A mode or TLP label the API does not know, a target whose type cannot be inferred, "
                         "or a target or seed that the scope excludes"},
    403: {"description": "A TLP label above the key's"}})
async def start_investigation(body: StartBody, clients: ClientsDep, caller: CallerDep) -> JSONResponse:
    """Start an investigation of `target`, as the key's team's; it runs in the background (follow it at
    GET /api/v1/investigations/{id}/events). Budget fields left out take the service's defaults."""
    budget = body.budget
    request = swarm_pb2.StartInvestigationRequest(
        target=body.target, target_type=(body.target_type or "").strip(),
        mode=parse_label(swarm_pb2.Mode, "MODE_", MODES, body.mode, "mode"),
        budget=swarm_pb2.Budget(max_tool_calls=budget.max_tool_calls or 0, max_tokens=budget.max_tokens or 0,
                                max_wall_s=budget.max_wall_s or 0.0, max_depth=budget.max_depth or 0),
        scope=swarm_pb2.Scope(allow=body.scope.allow, opsec=body.scope.opsec),
        tlp=tlp_value(body.tlp), seeds=body.seeds, access=caller.access(),
    )
    investigation = await clients.swarm.StartInvestigation(request)
    return JSONResponse(investigation_json(investigation), status_code=202,
                        headers={"Location": f"/api/v1/investigations/{quote(investigation.id, safe='')}"})


@router.get("/api/v1/investigations", dependencies=[READ], responses={
    200: _example({"investigations": [_INVESTIGATION_EXAMPLE], "next_cursor": "MjAyNi0xMi0wMVQxMDowMDowMHw1YjBm"}),
    400: {"description": "An unknown status label, or a bad cursor"}})
async def list_investigations(
    clients: ClientsDep, caller: CallerDep,
    status: Annotated[str, Query(description=", ".join(STATUSES) + " (any case); empty: any",
                                 json_schema_extra=labels("", *STATUSES))] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    cursor: Cursor = "",
) -> dict[str, Any]:
    """The key's team's investigations (every team's for an admin key), newest first, without
    reports; `next_cursor` is "" on the last page."""
    value = parse_label(swarm_pb2.Status, "STATUS_", STATUSES, status, "status") if status.strip() \
        else swarm_pb2.STATUS_UNSPECIFIED
    page = await clients.swarm.ListInvestigations(
        swarm_pb2.ListInvestigationsRequest(status=value, limit=limit, cursor=cursor, access=caller.access()))
    return {"investigations": [investigation_json(i) for i in page.investigations], "next_cursor": page.next_cursor}


@router.get(INVESTIGATION_PATH, dependencies=[READ], responses={**_NOT_FOUND, 200: _example(_INVESTIGATION_EXAMPLE)})
async def get_investigation(investigation_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """Status, phase, progress (0..1), usage against the budget, and the report (JSON) once finished."""
    return investigation_json(await clients.swarm.GetInvestigation(
        swarm_pb2.GetInvestigationRequest(id=investigation_id, access=caller.access())))


@router.delete(INVESTIGATION_PATH, dependencies=[WRITE], responses=_NOT_FOUND)
async def cancel_investigation(investigation_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """Stop it within seconds, keeping the partial report; a finished one is left as it is."""
    return investigation_json(await clients.swarm.CancelInvestigation(
        swarm_pb2.CancelInvestigationRequest(id=investigation_id, access=caller.access())))


async def _report(clients: Clients, caller: Caller, investigation_id: str, kind: swarm_pb2.ReportFormat.ValueType) -> str:
    answer = await clients.swarm.GetReport(
        swarm_pb2.GetReportRequest(id=investigation_id, format=kind, access=caller.access()))
    return str(answer.content)


@router.get(f"{INVESTIGATION_PATH}/report", dependencies=[READ], responses={**_NOT_FOUND, **_NO_REPORT})
async def report_json(investigation_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """The report: findings, each claim citing evidence ids (GET /api/v1/evidence/{id})."""
    content = _json_object(await _report(clients, caller, investigation_id, swarm_pb2.REPORT_FORMAT_JSON), "a report")
    if not isinstance(content, dict):
        raise RpcError(StatusCode.INTERNAL, "the swarm sent a report that is not a JSON object")
    return content


@router.get(f"{INVESTIGATION_PATH}/report.md", dependencies=[READ], response_class=Response, responses={
    200: {"description": "The report as Markdown", "content": {"text/markdown": {"schema": {"type": "string"}}}},
    **_NOT_FOUND, **_NO_REPORT})
async def report_markdown(investigation_id: str, clients: ClientsDep, caller: CallerDep) -> Response:
    return Response(await _report(clients, caller, investigation_id, swarm_pb2.REPORT_FORMAT_MARKDOWN),
                    media_type="text/markdown; charset=utf-8")


@router.get(f"{INVESTIGATION_PATH}/report.stix", dependencies=[READ], response_class=Response, responses={
    200: {"description": "The report as a STIX 2.1 bundle",
          "content": {"application/stix+json": {"schema": {"type": "object"}}}},
    **_NOT_FOUND, **_NO_REPORT})
async def report_stix(investigation_id: str, clients: ClientsDep, caller: CallerDep) -> Response:
    return Response(await _report(clients, caller, investigation_id, swarm_pb2.REPORT_FORMAT_STIX),
                    media_type="application/stix+json")


@router.get(f"{INVESTIGATION_PATH}/events", dependencies=[READ], response_class=StreamingResponse,
            responses=_SSE_RESPONSES)
async def events(
    investigation_id: str, clients: ClientsDep, caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=INT64_MAX, description="only events after this id")] = 0,
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", description="what an SSE client resends on reconnecting: wins over `after`")] = None,
) -> StreamingResponse:
    """The investigation's events, from the first (or after `Last-Event-ID` / `after`) to `done`."""
    resume = _resume_point(last_event_id, after)
    access = caller.access()
    # Asked first so that an unknown id or an absent swarm is a status (404, 503), not a broken stream.
    await clients.swarm.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation_id, access=access))

    async def frames() -> AsyncIterator[bytes]:
        stream = watch(clients, access, investigation_id, resume, HEARTBEAT_S)
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


@router.websocket(f"{INVESTIGATION_PATH}/events/ws")
async def events_ws(websocket: WebSocket, investigation_id: str, clients: ClientsDep, caller: CallerDep) -> None:
    """The same events as JSON text messages; send {"after": N} within WS_RESUME_WAIT_S of
    connecting to resume after event N. Closed (1000) after `done`; a broken stream sends
    {"error", "code"} and closes with 1011 (1013 when the swarm is unavailable). Needs the read scope."""
    if await refused_without_read(websocket, caller):
        return
    access = caller.access()
    try:
        await clients.swarm.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation_id, access=access))
    except RpcError as exc:
        await refuse_websocket(websocket, HTTP_STATUS.get(exc.code, 502), exc.message, exc.code.name)
        return
    await accept_websocket(websocket)
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
        stream = watch(clients, access, investigation_id, after, None)
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

    await serve_websocket(websocket, send_events(), investigation=investigation_id)


@router.post("/api/v1/workflows", status_code=202, dependencies=[WRITE], responses={
    202: {**_example(_WORKFLOW_EXAMPLE | {"status": "queued", "progress": 0.0, "started_at": None, "finished_at": None,
                                          "steps": []}, "Queued: the workflow, its `Location` header its URL"),
          "headers": {"Location": {"description": "/api/v1/workflows/{id}", "schema": {"type": "string"}}}},
    400: {"description": "A spec the swarm refuses, the message saying why: a dependency on no step, a cycle "
                         "(named), a template naming a step not depended on, duplicate step ids, tool arguments "
                         "that do not fit the tool, a Collect target outside the scope, an unknown tier"}})
async def submit_workflow(body: WorkflowBody, clients: ClientsDep, caller: CallerDep) -> JSONResponse:
    """Queue a workflow, a DAG of typed steps (llm_generation, tool_execution, data_processing,
    file_operations), run durably by the swarm as the key's team's; follow it at GET /api/v1/workflows/{id}."""
    spec = body.model_dump(mode="json", exclude_unset=True)
    answer = await clients.swarm.SubmitWorkflow(
        swarm_pb2.SubmitWorkflowRequest(spec_json=json.dumps(spec), access=caller.access()))
    return JSONResponse(workflow_json(answer), status_code=202,
                        headers={"Location": f"/api/v1/workflows/{quote(answer.id, safe='')}"})


@router.get("/api/v1/workflows", dependencies=[READ], responses={
    200: _example({"workflows": [_WORKFLOW_EXAMPLE | {"spec": None, "steps": []}], "next_cursor": ""}),
    400: {"description": "An unknown status label, or a bad cursor"}})
async def list_workflows(
    clients: ClientsDep, caller: CallerDep,
    status: Annotated[str, Query(description=", ".join(WORKFLOW_STATUSES) + " (any case); empty: any",
                                 json_schema_extra=labels("", *WORKFLOW_STATUSES))] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    cursor: Cursor = "",
) -> dict[str, Any]:
    """The key's team's workflows (every team's for an admin key), newest first, without specs and
    step outputs; `next_cursor` is "" on the last page."""
    value = parse_label(swarm_pb2.Status, "STATUS_", list(WORKFLOW_STATUSES), status, "status") \
        if status.strip() else swarm_pb2.STATUS_UNSPECIFIED
    page = await clients.swarm.ListWorkflows(
        swarm_pb2.ListWorkflowsRequest(status=value, limit=limit, cursor=cursor, access=caller.access()))
    return {"workflows": [workflow_json(w) for w in page.workflows], "next_cursor": page.next_cursor}


@router.get(WORKFLOW_PATH, dependencies=[READ], responses={
    200: _example(_WORKFLOW_EXAMPLE), 404: {"description": "No workflow by that id"}})
async def get_workflow(workflow_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """Status (queued, running, completed, failed, cancelled), progress (0..1), the spec, and each
    step's status (pending, running, completed, failed, skipped, cancelled), output and error."""
    return workflow_json(await clients.swarm.GetWorkflow(
        swarm_pb2.GetWorkflowRequest(id=workflow_id, access=caller.access())))


@router.delete(WORKFLOW_PATH, dependencies=[WRITE], responses={
    404: {"description": "No workflow by that id"}, 409: {"description": "The workflow already completed or failed"}})
async def cancel_workflow(workflow_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel it within seconds: finished steps keep their outputs, the rest are cancelled. A
    cancelled one is returned as it is."""
    return workflow_json(await clients.swarm.CancelWorkflow(
        swarm_pb2.CancelWorkflowRequest(id=workflow_id, access=caller.access())))


@router.get("/api/v1/evidence/{evidence_id}", dependencies=[READ], responses={
    200: _example({"id": "ev-91c2", "investigation_id": "5b0f3e8e-7c1d-4b7a-9a61-0e2f4c9d1a33", "kind": "observation",
                   "uri": "dns://browser-update.example.com/A", "collector": "dns",
                   "collected_at": "2026-12-01T10:00:03Z", "tlp": "amber",
                   "content": "browser-update.example.com A 203.0.113.9", "document_id": None, "start": 0, "end": 0}),
    404: {"description": "No evidence by that id"}})
async def evidence(evidence_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """One stored evidence item, what a report's citation resolves to: an observation, or an
    excerpt (`content` = the corpus document's text[start:end])."""
    e = await clients.swarm.GetEvidence(swarm_pb2.GetEvidenceRequest(id=evidence_id, access=caller.access()))
    return {"id": e.id, "investigation_id": e.investigation_id, "kind": e.kind, "uri": e.uri,
            "collector": e.collector, "collected_at": _time(e, "collected_at"), "tlp": _tlp_label(e.tlp),
            "content": e.content, "document_id": e.document_id or None, "start": e.start, "end": e.end}


@router.get("/api/v1/agents", dependencies=[READ], responses={200: _example({
    "roles": [{"name": "leader", "description": "plans the investigation and assigns tasks",
               "phases": ["ingestion", "hypotheses"], "tools": ["embeddings.Search"], "can_vote": True}],
    "agents": [{"id": "5b0f3e8e-7c1d-4b7a-9a61-0e2f4c9d1a33/worker-1", "role": "worker",
                "investigation_id": "5b0f3e8e-7c1d-4b7a-9a61-0e2f4c9d1a33", "activity": "collectors.Collect dns",
                "since": "2026-12-01T10:00:02Z", "instance": "swarm-8e1b"}],
    "next_cursor": ""})})
async def agents(clients: ClientsDep, caller: CallerDep, limit: Limit = 100, cursor: PageCursor = "") -> dict[str, Any]:
    """The roles investigations staff (every page), and a page of the agents working now on the key's
    team's investigations (by id): role, investigation, activity, since when, the swarm replica running it."""
    answer = await clients.swarm.ListAgents(swarm_pb2.ListAgentsRequest(access=caller.access()))
    page, next_cursor = paged(answer.agents, lambda a: a.id, limit, cursor)
    return {"roles": [_role_json(role) for role in answer.roles],
            "agents": [{"id": a.id, "role": a.role, "investigation_id": a.investigation_id, "activity": a.activity,
                        "since": _time(a, "since"), "instance": a.instance} for a in page],
            "next_cursor": next_cursor}


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
