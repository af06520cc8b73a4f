"""The investigation API (services/gateway/routes/swarm.py) and `bev investigate` / `bev investigations`,
over real HTTP, WebSocket and a real nats-server.

The swarm service itself is not used: routes are checked against a gateway with nothing behind it
(validation happens before any call; an absent swarm is 503 at once) and against `StubSwarm`, a
scripted in-memory Swarm servicer that stands in for it on the bus, so that the translation (labels,
timestamps, the report, 202 + Location, 404/409 mapping, SSE framing and resume, the WebSocket) is
checked end to end. The real service's behaviour is its own tests'."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from nats.aio.client import Client as NatsClient
from typer.testing import CliRunner

from bev.cli import app as cli
from bev.common.v1 import common_pb2
from bev.engines import NatsServer
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.rpc.context import CallContext
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmServicer
from bev.testing.serving import serving_on_nats
from services.gateway.routes import swarm as swarm_routes
from services.gateway.testing import gateway_on_free_port

VALID = {"target": "example.com", "mode": "democratic", "tlp": "amber",
         "budget": {"max_tool_calls": 40, "max_tokens": 20000, "max_wall_s": 90.5, "max_depth": 2},
         "scope": {"allow": ["example.com", "203.0.113.0/24"], "opsec": True},
         "seeds": ["https://example.com/about"]}
REPORT = {"summary": "example.com is a parked domain", "findings": [{"claim": "parked", "evidence": ["ev-1"]}]}
SCRIPT: list[tuple[str, dict[str, Any]]] = [("phase", {"phase": "ingestion", "progress": 0.1}), ("tool_call", {"tool": "collectors.Collect"}),
          ("evidence", {"id": "ev-1"}), ("entity", {"name": "example.com"}),
          ("phase", {"phase": "hypotheses", "progress": 0.5}), ("hypothesis", {"statement": "parked"}),
          ("vote", {"agent": "a1"}), ("vote", {"agent": "a2"}), ("phase", {"phase": "synthesis", "progress": 0.9})]


class StubSwarm(SwarmServicer):
    """An in-memory Swarm: investigations start queued; `run` plays SCRIPT's events and finishes one.
    A target starting with "auto-" runs by itself once started ("auto-fail" fails, "auto-budget"
    runs out of budget), one starting with "slow-" too, an event every half second; "untypable" is
    refused as the service refuses it."""

    def __init__(self) -> None:
        super().__init__(InstanceInfo(service="swarm"))
        self.investigations: dict[str, swarm_pb2.Investigation] = {}
        self.events: dict[str, list[swarm_pb2.InvestigationEvent]] = {}
        self.requests: list[swarm_pb2.StartInvestigationRequest] = []
        self.changed = asyncio.Condition()
        self.tasks: set[asyncio.Task[None]] = set()
        self.watching = 0  # WatchInvestigation calls in progress

    def _get(self, investigation_id: str) -> swarm_pb2.Investigation:
        if investigation_id not in self.investigations:
            raise RpcError(StatusCode.NOT_FOUND, f"no investigation {investigation_id!r}")
        return self.investigations[investigation_id]

    async def emit(self, investigation_id: str, kind: str, data: dict[str, Any]) -> None:
        events = self.events[investigation_id]
        event = swarm_pb2.InvestigationEvent(id=len(events) + 1, investigation_id=investigation_id, kind=kind,
                                             data_json=json.dumps(data))
        event.at.GetCurrentTime()
        events.append(event)
        async with self.changed:
            self.changed.notify_all()

    async def run(self, investigation_id: str, status: swarm_pb2.Status.ValueType = swarm_pb2.STATUS_COMPLETED,
                  delay_s: float = 0.0) -> None:
        investigation = self.investigations[investigation_id]
        investigation.status = swarm_pb2.STATUS_RUNNING
        investigation.started_at.GetCurrentTime()
        for kind, data in SCRIPT:
            await asyncio.sleep(delay_s)
            if investigation.status == swarm_pb2.STATUS_CANCELLED:
                return
            if "phase" in data:
                investigation.phase = swarm_pb2.Phase.Value(f"PHASE_{str(data['phase']).upper()}")
                investigation.progress = float(data["progress"])
            if kind == "tool_call":
                investigation.usage.tool_calls += 1
            await self.emit(investigation_id, kind, data)
        await self.finish(investigation_id, status)

    async def finish(self, investigation_id: str, status: swarm_pb2.Status.ValueType) -> None:
        investigation = self.investigations[investigation_id]
        investigation.status = status
        investigation.progress = 1.0
        investigation.usage.tokens, investigation.usage.wall_s = 1234, 5.5
        investigation.finished_at.GetCurrentTime()
        investigation.error = "the graph went away" if status == swarm_pb2.STATUS_FAILED else ""
        if status != swarm_pb2.STATUS_FAILED:
            investigation.report_json = json.dumps(REPORT)
        await self.emit(investigation_id, "done", {"status": swarm_pb2.Status.Name(status).removeprefix("STATUS_").lower()})

    async def StartInvestigation(self, request: swarm_pb2.StartInvestigationRequest,
                                 ctx: CallContext) -> swarm_pb2.Investigation:
        if request.target == "untypable":
            raise RpcError(StatusCode.INVALID_ARGUMENT, "cannot tell what 'untypable' is; give target_type")
        self.requests.append(request)
        investigation_id = f"inv-{len(self.requests)}"
        b = request.budget
        investigation = swarm_pb2.Investigation(
            id=investigation_id, target=request.target, target_type=request.target_type or "domain", mode=request.mode,
            status=swarm_pb2.STATUS_QUEUED, scope=request.scope, tlp=request.tlp or common_pb2.TLP_CLEAR,
            seeds=request.seeds, budget=swarm_pb2.Budget(
                max_tool_calls=b.max_tool_calls or 200, max_tokens=b.max_tokens or 200000,
                max_wall_s=b.max_wall_s or 1800.0, max_depth=b.max_depth or 2))
        investigation.created_at.GetCurrentTime()
        self.investigations[investigation_id] = investigation
        self.events[investigation_id] = []
        if request.target.startswith(("auto-", "slow-")):
            status = {"auto-fail": swarm_pb2.STATUS_FAILED,
                      "auto-budget": swarm_pb2.STATUS_BUDGET_EXHAUSTED}.get(request.target, swarm_pb2.STATUS_COMPLETED)
            delay_s = 0.5 if request.target.startswith("slow-") else 0.05
            task = asyncio.create_task(self.run(investigation_id, status, delay_s=delay_s))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return investigation

    async def GetInvestigation(self, request: swarm_pb2.GetInvestigationRequest,
                               ctx: CallContext) -> swarm_pb2.Investigation:
        return self._get(request.id)

    async def ListInvestigations(self, request: swarm_pb2.ListInvestigationsRequest,
                                 ctx: CallContext) -> swarm_pb2.ListInvestigationsResponse:
        found = [i for i in reversed(self.investigations.values())
                 if request.status in (swarm_pb2.STATUS_UNSPECIFIED, i.status)]
        start = int(request.cursor or 0)
        page = found[start:start + (request.limit or 50)]
        more = start + len(page) < len(found)
        listed = []
        for investigation in page:
            copy = swarm_pb2.Investigation()
            copy.CopyFrom(investigation)
            copy.report_json = ""
            listed.append(copy)
        return swarm_pb2.ListInvestigationsResponse(investigations=listed,
                                                    next_cursor=str(start + len(page)) if more else "")

    async def CancelInvestigation(self, request: swarm_pb2.CancelInvestigationRequest,
                                  ctx: CallContext) -> swarm_pb2.Investigation:
        investigation = self._get(request.id)
        if investigation.status in (swarm_pb2.STATUS_QUEUED, swarm_pb2.STATUS_RUNNING):
            await self.finish(request.id, swarm_pb2.STATUS_CANCELLED)
        return investigation

    async def GetReport(self, request: swarm_pb2.GetReportRequest, ctx: CallContext) -> swarm_pb2.Report:
        investigation = self._get(request.id)
        if not investigation.report_json:
            raise RpcError(StatusCode.FAILED_PRECONDITION, f"investigation {request.id} has no report yet")
        if request.format == swarm_pb2.REPORT_FORMAT_MARKDOWN:
            return swarm_pb2.Report(content=f"# {investigation.target}\n\n{REPORT['summary']} ✓\n",
                                    media_type="text/markdown")
        if request.format == swarm_pb2.REPORT_FORMAT_STIX:
            return swarm_pb2.Report(content=json.dumps({"type": "bundle", "id": "bundle--1", "objects": []}),
                                    media_type="application/stix+json")
        return swarm_pb2.Report(content=investigation.report_json, media_type="application/json")

    async def WatchInvestigation(self, request: swarm_pb2.WatchInvestigationRequest,
                                 ctx: CallContext) -> AsyncIterator[swarm_pb2.InvestigationEvent]:
        self._get(request.id)
        sent = request.after_id
        self.watching += 1
        try:
            while True:
                for event in self.events[request.id][sent:]:
                    yield event
                    sent = event.id
                    if event.kind == "done":
                        return
                async with self.changed:
                    if len(self.events[request.id]) <= sent:
                        await self.changed.wait()
        finally:
            self.watching -= 1

    async def GetEvidence(self, request: swarm_pb2.GetEvidenceRequest, ctx: CallContext) -> swarm_pb2.Evidence:
        if request.id != "ev-1":
            raise RpcError(StatusCode.NOT_FOUND, f"no evidence {request.id!r}")
        evidence = swarm_pb2.Evidence(id="ev-1", investigation_id="inv-1", kind="excerpt", uri="https://example.com/",
                                      collector="web", tlp=common_pb2.TLP_GREEN, content="parked",
                                      document_id="doc-1", start=10, end=16)
        evidence.collected_at.FromSeconds(1_700_000_000)
        return evidence

    async def ListAgents(self, request: swarm_pb2.ListAgentsRequest, ctx: CallContext) -> swarm_pb2.ListAgentsResponse:
        agent = swarm_pb2.Agent(id="inv-1/leader", role="leader", investigation_id="inv-1", activity="planning",
                                instance="abc")
        agent.since.FromSeconds(1_700_000_000)
        return swarm_pb2.ListAgentsResponse(
            roles=[swarm_pb2.AgentRole(name="leader", description="plans", phases=[swarm_pb2.PHASE_INGESTION,
                                                                                   swarm_pb2.PHASE_SYNTHESIS],
                                       tools=["collectors.Collect"], can_vote=True)],
            agents=[agent])


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A bus of this module's own: no swarm another test serves may answer here."""
    with NatsServer(tmp_path_factory.mktemp("investigations-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bare(own_nats: NatsServer) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with no service behind it."""
    nc = NatsClient()
    await nc.connect(own_nats.url)
    try:
        async with gateway_on_free_port(nc) as url, httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
            yield http
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def stub_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("stub-swarm-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stub() -> StubSwarm:
    return StubSwarm()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(stub_nats: NatsServer, stub: StubSwarm) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of StubSwarm."""
    async with serving_on_nats(stub, stub_nats.url) as nc, gateway_on_free_port(nc) as url, \
            httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
        yield http


# --- without a swarm ---------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown mode", {**VALID, "mode": "anarchic"}, 400, "anarchic"),
    ("unknown TLP", {**VALID, "tlp": "purple"}, 400, "purple"),
    ("no target", {"mode": "hybrid"}, 422, "target"),
    ("empty target", {"target": ""}, 422, "target"),
    ("blank target", {"target": "   "}, 422, "target"),
    ("long target", {"target": "a" * 2049}, 422, "target"),
    ("target not a string", {"target": 5}, 422, "target"),
    ("unknown field", {**VALID, "priority": "high"}, 422, "priority"),
    ("unknown budget field", {"target": "example.com", "budget": {"max_calls": 5}}, 422, "max_calls"),
    ("zero tool calls", {"target": "example.com", "budget": {"max_tool_calls": 0}}, 422, "max_tool_calls"),
    ("too many tool calls", {"target": "example.com", "budget": {"max_tool_calls": 10001}}, 422, "max_tool_calls"),
    ("too many tokens", {"target": "example.com", "budget": {"max_tokens": 10_000_001}}, 422, "max_tokens"),
    ("zero seconds", {"target": "example.com", "budget": {"max_wall_s": 0}}, 422, "max_wall_s"),
    ("over a day", {"target": "example.com", "budget": {"max_wall_s": 86400.5}}, 422, "max_wall_s"),
    ("depth 6", {"target": "example.com", "budget": {"max_depth": 6}}, 422, "max_depth"),
    ("depth as text", {"target": "example.com", "budget": {"max_depth": "3"}}, 422, "max_depth"),
    ("fractional depth", {"target": "example.com", "budget": {"max_depth": 2.5}}, 422, "max_depth"),
    ("opsec as text", {"target": "example.com", "scope": {"opsec": "yes"}}, 422, "opsec"),
    ("allow not a list", {"target": "example.com", "scope": {"allow": "example.com"}}, 422, "allow"),
    ("101 allowed", {"target": "example.com", "scope": {"allow": ["example.com"] * 101}}, 422, "allow"),
    ("21 seeds", {"target": "example.com", "seeds": [f"https://example.com/{n}" for n in range(21)]}, 422, "seeds"),
    ("seed not a URL", {"target": "example.com", "seeds": ["example.com/about"]}, 422, "seeds"),
    ("mode not a string", {"target": "example.com", "mode": 3}, 422, "mode"),
    ("body not an object", ["example.com"], 422, "body"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("body", "status", "word"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
async def test_bad_start_requests_are_refused_before_any_call(bare: httpx.AsyncClient, body: dict[str, Any],
                                                              status: int, word: str) -> None:
    response = await bare.post("/api/v1/investigations", json=body)
    assert response.status_code == status, response.text
    assert word in response.json()["error"] and response.json()["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v1/investigations"), ("GET", "/api/v1/investigations"), ("GET", "/api/v1/investigations/inv-1"),
    ("DELETE", "/api/v1/investigations/inv-1"), ("GET", "/api/v1/investigations/inv-1/report"),
    ("GET", "/api/v1/investigations/inv-1/report.md"), ("GET", "/api/v1/investigations/inv-1/report.stix"),
    ("GET", "/api/v1/investigations/inv-1/events"), ("GET", "/api/v1/evidence/ev-1"), ("GET", "/api/v1/agents"),
])
async def test_without_a_swarm_every_route_is_503_at_once(bare: httpx.AsyncClient, method: str, path: str) -> None:
    began = time.monotonic()
    response = await bare.request(method, path, json=VALID if method == "POST" else None)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "UNAVAILABLE" and response.json()["error"]
    assert time.monotonic() - began < 2  # no responders: not a wait for the deadline


async def test_without_a_swarm_the_websocket_is_refused_with_503(bare: httpx.AsyncClient) -> None:
    url = str(bare.base_url).replace("http://", "ws://") + "/api/v1/investigations/inv-1/events/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, open_timeout=5):
            pass
    assert refused.value.response.status_code == 503
    assert json.loads(refused.value.response.body or b"{}")["code"] == "UNAVAILABLE"


async def test_bad_list_and_stream_parameters(bare: httpx.AsyncClient) -> None:
    status = await bare.get("/api/v1/investigations", params={"status": "sleeping"})
    assert status.status_code == 400 and "sleeping" in status.json()["error"] and "budget_exhausted" in status.json()["error"]
    for limit in ("0", "501", "ten"):
        assert (await bare.get("/api/v1/investigations", params={"limit": limit})).status_code == 422
    after = await bare.get("/api/v1/investigations/inv-1/events", params={"after": "-1"})
    assert after.status_code == 422
    for last_event_id in ("twelve", "-3", "1e3", "9" * 5000, "9223372036854775808"):
        last = await bare.get("/api/v1/investigations/inv-1/events", headers={"Last-Event-ID": last_event_id})
        assert last.status_code == 400 and "Last-Event-ID" in last.json()["error"], last_event_id


async def test_the_schema_lists_each_route_with_its_statuses(bare: httpx.AsyncClient) -> None:
    paths = (await bare.get("/openapi.json")).json()["paths"]
    expected = {
        ("/api/v1/investigations", "post"): {"202", "400", "422", "503", "504"},
        ("/api/v1/investigations", "get"): {"200", "400", "422", "503"},
        ("/api/v1/investigations/{investigation_id}", "get"): {"200", "404", "503"},
        ("/api/v1/investigations/{investigation_id}", "delete"): {"200", "404", "503"},
        ("/api/v1/investigations/{investigation_id}/report", "get"): {"200", "404", "409"},
        ("/api/v1/investigations/{investigation_id}/report.md", "get"): {"200", "404", "409"},
        ("/api/v1/investigations/{investigation_id}/report.stix", "get"): {"200", "404", "409"},
        ("/api/v1/investigations/{investigation_id}/events", "get"): {"200", "400", "404", "503"},
        ("/api/v1/evidence/{evidence_id}", "get"): {"200", "404", "503"},
        ("/api/v1/agents", "get"): {"200", "503"},
        ("/api/v1/swarm/roles", "get"): {"200", "400", "503"},
    }
    for (path, method), statuses in expected.items():
        declared = set(paths[path][method]["responses"])
        assert statuses <= declared, (path, method, declared)
    assert "202" in paths["/api/v1/investigations"]["post"]["responses"]
    assert "200" not in paths["/api/v1/investigations"]["post"]["responses"]
    assert "Location" in paths["/api/v1/investigations"]["post"]["responses"]["202"]["headers"]
    content = {p: set(paths[f"/api/v1/investigations/{{investigation_id}}/{p}"]["get"]["responses"]["200"]["content"])
               for p in ("report.md", "report.stix", "events")}
    assert content == {"report.md": {"text/markdown"}, "report.stix": {"application/stix+json"},
                       "events": {"text/event-stream"}}
    body = (await bare.get("/openapi.json")).json()["components"]["schemas"]["StartBody"]
    assert body["additionalProperties"] is False and body["properties"]["mode"]["enum"] == swarm_routes.MODES


# --- in front of a stand-in swarm --------------------------------------------------------------

async def test_start_is_202_with_its_location_and_labels(gateway: httpx.AsyncClient, stub: StubSwarm) -> None:
    response = await gateway.post("/api/v1/investigations", json=VALID)
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/api/v1/investigations/{body['id']}"
    request = stub.requests[-1]
    assert (request.target, request.target_type, request.mode, request.tlp) == \
        ("example.com", "", swarm_pb2.MODE_DEMOCRATIC, common_pb2.TLP_AMBER)
    assert (request.budget.max_tool_calls, request.budget.max_tokens, request.budget.max_wall_s,
            request.budget.max_depth) == (40, 20000, 90.5, 2)
    assert list(request.scope.allow) == ["example.com", "203.0.113.0/24"] and request.scope.opsec
    assert list(request.seeds) == ["https://example.com/about"]
    assert body["mode"] == "democratic" and body["status"] == "queued" and body["phase"] is None
    assert body["tlp"] == "amber" and body["target_type"] == "domain"
    assert body["created_at"].endswith("Z") and body["started_at"] is None and body["finished_at"] is None
    assert body["report"] is None and body["error"] is None
    assert body["budget"] == {"max_tool_calls": 40, "max_tokens": 20000, "max_wall_s": 90.5, "max_depth": 2}
    assert body["scope"] == {"allow": ["example.com", "203.0.113.0/24"], "opsec": True}
    assert body["usage"] == {"tokens": 0, "tool_calls": 0, "wall_s": 0.0}
    assert set(body) == {"id", "target", "target_type", "mode", "status", "phase", "progress", "created_at",
                         "started_at", "finished_at", "usage", "budget", "scope", "tlp", "seeds", "error", "report"}

    defaults = await gateway.post("/api/v1/investigations", json={"target": "example.org", "mode": "AUTONOMOUS",
                                                                   "target_type": None, "budget": {"max_wall_s": 60}})
    assert defaults.status_code == 202, defaults.text
    request = stub.requests[-1]
    assert request.mode == swarm_pb2.MODE_AUTONOMOUS and request.tlp == common_pb2.TLP_CLEAR
    assert (request.budget.max_tool_calls, request.budget.max_wall_s) == (0, 60.0)  # 0: the service's default
    assert defaults.json()["budget"]["max_tool_calls"] == 200  # as the service filled it in


async def test_the_services_refusal_is_400_with_its_message(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/v1/investigations", json={"target": "untypable"})
    assert response.status_code == 400
    assert response.json() == {"error": "cannot tell what 'untypable' is; give target_type", "code": "INVALID_ARGUMENT"}


async def test_get_list_cancel_and_reports(gateway: httpx.AsyncClient, stub: StubSwarm) -> None:
    started = (await gateway.post("/api/v1/investigations", json={"target": "reports.example"})).json()
    url = f"/api/v1/investigations/{started['id']}"
    for suffix in ("/report", "/report.md", "/report.stix"):
        early = await gateway.get(url + suffix)
        assert early.status_code == 409 and early.json()["code"] == "FAILED_PRECONDITION", suffix
    await stub.run(started["id"])
    done = (await gateway.get(url)).json()
    assert done["status"] == "completed" and done["phase"] == "synthesis" and done["progress"] == 1.0
    assert done["report"] == REPORT and done["usage"] == {"tokens": 1234, "tool_calls": 1, "wall_s": 5.5}
    assert done["started_at"].endswith("Z") and done["finished_at"].endswith("Z")

    assert (await gateway.get(url + "/report")).json() == REPORT
    markdown = await gateway.get(url + "/report.md")
    assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
    assert markdown.text.startswith("# reports.example") and "✓" in markdown.text
    stix = await gateway.get(url + "/report.stix")
    assert stix.headers["content-type"] == "application/stix+json" and stix.json()["type"] == "bundle"

    queued = (await gateway.post("/api/v1/investigations", json={"target": "cancel.example"})).json()
    cancelled = await gateway.delete(f"/api/v1/investigations/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["report"] == REPORT  # the partial report is kept

    listed = await gateway.get("/api/v1/investigations", params={"status": "Completed"})
    assert listed.status_code == 200
    assert [i["id"] for i in listed.json()["investigations"]] == [started["id"]]
    assert listed.json()["investigations"][0]["report"] is None  # lists carry no reports
    first = (await gateway.get("/api/v1/investigations", params={"limit": 1})).json()
    assert len(first["investigations"]) == 1 and first["next_cursor"]
    rest = (await gateway.get("/api/v1/investigations", params={"limit": 500, "cursor": first["next_cursor"]})).json()
    assert rest["next_cursor"] is None and first["investigations"][0]["id"] not in {i["id"] for i in rest["investigations"]}

    for path in ("/api/v1/investigations/nope", "/api/v1/investigations/nope/report.md", "/api/v1/evidence/nope",
                 "/api/v1/investigations/nope/events"):
        missing = await gateway.get(path)
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND", path
    assert (await gateway.delete("/api/v1/investigations/nope")).status_code == 404


async def test_evidence_and_agents(gateway: httpx.AsyncClient) -> None:
    evidence = await gateway.get("/api/v1/evidence/ev-1")
    assert evidence.status_code == 200
    assert evidence.json() == {"id": "ev-1", "investigation_id": "inv-1", "kind": "excerpt", "uri": "https://example.com/",
                               "collector": "web", "collected_at": "2023-11-14T22:13:20Z", "tlp": "green",
                               "content": "parked", "document_id": "doc-1", "start": 10, "end": 16}
    agents = (await gateway.get("/api/v1/agents")).json()
    assert agents["roles"] == [{"name": "leader", "description": "plans", "phases": ["ingestion", "synthesis"],
                                "tools": ["collectors.Collect"], "can_vote": True}]
    assert agents["agents"] == [{"id": "inv-1/leader", "role": "leader", "investigation_id": "inv-1",
                                 "activity": "planning", "since": "2023-11-14T22:13:20Z", "instance": "abc"}]


async def _sse(http: httpx.AsyncClient, path: str, **kwargs: Any) -> list[dict[str, str]]:
    """Every frame of an SSE response until it ends: its fields, comments as {"comment": ...}."""
    frames: list[dict[str, str]] = []
    async with http.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        async for line in response.aiter_lines():
            if not line:
                if frame:
                    frames.append(frame)
                frame = {}
            elif line.startswith(":"):
                frame["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(":")
                frame[name] = value.removeprefix(" ")
    return frames


async def test_events_stream_as_sse_resume_and_end_after_done(gateway: httpx.AsyncClient, stub: StubSwarm,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swarm_routes, "HEARTBEAT_S", 0.2)
    investigation_id = (await gateway.post("/api/v1/investigations", json={"target": "sse.example"})).json()["id"]
    path = f"/api/v1/investigations/{investigation_id}/events"
    running = asyncio.create_task(_sse(gateway, path))
    await asyncio.sleep(0.7)  # idle: heartbeats
    await stub.run(investigation_id, delay_s=0.01)
    frames = await asyncio.wait_for(running, 10)
    assert frames[0] == {"comment": "keep-alive"}
    events = [f for f in frames if "event" in f]
    assert [f["event"] for f in events] == [kind for kind, _ in SCRIPT] + ["done"]
    assert [int(f["id"]) for f in events] == list(range(1, len(SCRIPT) + 2))
    first = json.loads(events[0]["data"])
    assert first["id"] == 1 and first["investigation_id"] == investigation_id and first["kind"] == "phase"
    assert first["data"] == {"phase": "ingestion", "progress": 0.1} and first["at"].endswith("Z")

    # A finished investigation replays; Last-Event-ID (a reconnecting browser) wins over ?after=.
    resumed = await _sse(gateway, path, headers={"Last-Event-ID": "7"}, params={"after": "2"})
    assert [int(f["id"]) for f in resumed if "id" in f] == list(range(8, len(SCRIPT) + 2))
    after = await _sse(gateway, path, params={"after": str(len(SCRIPT))})
    assert [f["event"] for f in after if "event" in f] == ["done"]


async def test_events_over_websocket(gateway: httpx.AsyncClient, stub: StubSwarm) -> None:
    investigation_id = (await gateway.post("/api/v1/investigations", json={"target": "auto-ws.example"})).json()["id"]
    url = str(gateway.base_url).replace("http://", "ws://") + f"/api/v1/investigations/{investigation_id}/events/ws"
    async with websockets.connect(url, open_timeout=5) as ws:  # nothing sent: from the first event
        received = [json.loads(message) async for message in ws]
        assert ws.close_code == 1000
    assert [e["kind"] for e in received] == [kind for kind, _ in SCRIPT] + ["done"]
    assert received[-1]["data"] == {"status": "completed"} and received[0]["investigation_id"] == investigation_id

    async with websockets.connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps({"after": 8}))
        resumed = [json.loads(message) async for message in ws]
    assert [e["id"] for e in resumed] == list(range(9, len(SCRIPT) + 2))

    async with websockets.connect(url, open_timeout=5) as ws:
        await ws.send("resume please")
        refusal = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008 and refusal["code"] == "INVALID_ARGUMENT" and "after" in refusal["error"]

    with pytest.raises(websockets.InvalidStatus) as missing:
        async with websockets.connect(url.replace(investigation_id, "nope"), open_timeout=5):
            pass
    assert missing.value.response.status_code == 404


async def _until(condition: Any, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_client_that_leaves_stops_the_watch(gateway: httpx.AsyncClient, stub: StubSwarm) -> None:
    investigation_id = (await gateway.post("/api/v1/investigations", json={"target": "leave.example"})).json()["id"]
    await stub.emit(investigation_id, "plan", {"summary": "look around"})
    async with gateway.stream("GET", f"/api/v1/investigations/{investigation_id}/events") as response:
        lines = response.aiter_lines()
        assert await anext(lines) == "id: 1"
        await _until(lambda: stub.watching == 1)
    await _until(lambda: stub.watching == 0)  # the gateway cancelled the RPC stream

    url = str(gateway.base_url).replace("http://", "ws://") + f"/api/v1/investigations/{investigation_id}/events/ws"
    async with websockets.connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps({"after": 0}))
        assert json.loads(await ws.recv())["kind"] == "plan"
        await _until(lambda: stub.watching == 1)
    await _until(lambda: stub.watching == 0)
    await stub.finish(investigation_id, swarm_pb2.STATUS_CANCELLED)


# --- the command line --------------------------------------------------------------------------

def test_cli_help_names_every_option() -> None:
    runner = CliRunner()
    investigate = runner.invoke(cli, ["investigate", "--help"], env={"COLUMNS": "200"})
    assert investigate.exit_code == 0
    for option in ("--type", "--mode", "--allow", "--seed", "--opsec", "--tlp", "--max-tool-calls", "--max-wall-s",
                   "--max-depth", "--max-tokens", "--follow", "--no-follow", "--json", "--data-dir"):
        assert option in investigate.output, option
    group = runner.invoke(cli, ["investigations", "--help"], env={"COLUMNS": "200"})
    assert group.exit_code == 0 and all(command in group.output for command in ("list", "show", "cancel"))
    listing = runner.invoke(cli, ["investigations", "list", "--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "--status" in listing.output and "--limit" in listing.output


@pytest.mark.parametrize("args", [["investigate", "example.com"], ["investigate", "example.com", "--no-follow"],
                                  ["investigations", "list"], ["investigations", "show", "inv-1"],
                                  ["investigations", "cancel", "inv-1"]])
def test_cli_without_a_fleet_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.delenv("BEV_NATS__URL", raising=False)
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bev: no fleet is running from") and "bev up" in lines[0]


def test_cli_refuses_bad_labels_and_bounds(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, word in ((["--mode", "anarchic"], "anarchic"), (["--tlp", "purple"], "purple"),
                       (["--max-depth", "6"], "--max-depth"), (["--max-tool-calls", "0"], "--max-tool-calls")):
        result = runner.invoke(cli, ["investigate", "example.com", "--data-dir", str(tmp_path), *args],
                               env={"COLUMNS": "200"})
        assert result.exit_code == 2 and word in result.output, (args, result.output)
    status = runner.invoke(cli, ["investigations", "list", "--status", "sleeping", "--data-dir", str(tmp_path)],
                           env={"COLUMNS": "200"})
    assert status.exit_code == 2 and "sleeping" in status.output


async def _invoke(nats_url: str, *args: str) -> Any:
    """The CLI in a thread (its own event loop), this loop serving the stand-in swarm meanwhile."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env={"BEV_NATS__URL": nats_url, "COLUMNS": "200"})


async def test_cli_investigates_follows_and_prints_the_report(gateway: httpx.AsyncClient, stub_nats: NatsServer) -> None:
    followed = await _invoke(stub_nats.url, "investigate", "auto-cli.example", "--mode", "hierarchical",
                             "--allow", "cli.example", "--seed", "https://cli.example/", "--max-depth", "1")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout.startswith("# auto-cli.example") and "✓" in followed.stdout  # raw Markdown: not a terminal
    assert "hypothesis parked" in followed.stderr and "[10] done" in followed.stderr  # one line per event

    as_json = await _invoke(stub_nats.url, "investigate", "auto-json.example", "--json")
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.stdout)
    assert shown["status"] == "completed" and shown["report"] == REPORT and shown["mode"] == "hybrid"

    budget = await _invoke(stub_nats.url, "investigate", "auto-budget", "--json")
    assert budget.exit_code == 1 and json.loads(budget.stdout)["status"] == "budget_exhausted"
    assert budget.stderr.strip().splitlines()[-1].startswith("bev: investigation inv-")
    assert "budget exhausted after 1/200 tool calls" in budget.stderr
    failed = await _invoke(stub_nats.url, "investigate", "auto-fail")
    assert failed.exit_code == 1 and "failed: the graph went away" in failed.stderr.strip().splitlines()[-1]


async def test_cli_lists_shows_and_cancels(gateway: httpx.AsyncClient, stub_nats: NatsServer) -> None:
    started = await _invoke(stub_nats.url, "investigate", "queued.example", "--no-follow")
    assert started.exit_code == 0, started.output
    investigation_id = started.stdout.strip()
    assert investigation_id.startswith("inv-") and f"bev investigations show {investigation_id}" in started.stderr

    listed = await _invoke(stub_nats.url, "investigations", "list", "--status", "queued", "--json")
    assert listed.exit_code == 0, listed.output
    assert investigation_id in {i["id"] for i in json.loads(listed.stdout)["investigations"]}
    table = await _invoke(stub_nats.url, "investigations", "list")
    assert table.exit_code == 0 and investigation_id in table.stdout and "queued.example" in table.stdout

    shown = await _invoke(stub_nats.url, "investigations", "show", investigation_id)
    assert shown.exit_code == 0 and "status queued" in shown.output
    cancelled = await _invoke(stub_nats.url, "investigations", "cancel", investigation_id)
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"investigation {investigation_id}: cancelled"
    report = await _invoke(stub_nats.url, "investigations", "show", investigation_id)
    assert report.exit_code == 0 and "status cancelled" in report.stderr and report.stdout.startswith("# queued.example")

    missing = await _invoke(stub_nats.url, "investigations", "show", "nope")
    assert missing.exit_code == 1 and missing.stderr.strip() == "bev: NOT_FOUND: no investigation 'nope'"


async def test_ctrl_c_stops_following_and_leaves_the_investigation_running(gateway: httpx.AsyncClient,
                                                                          stub: StubSwarm, stub_nats: NatsServer) -> None:
    bev = Path(sys.executable).parent / "bev"
    process = await asyncio.create_subprocess_exec(
        str(bev), "investigate", "slow-interrupted.example", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "BEV_NATS__URL": stub_nats.url},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a shell, even under CI
    assert process.stderr is not None
    try:
        while b"[1] phase ingestion" not in await asyncio.wait_for(process.stderr.readline(), 30):
            pass
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    [investigation] = [i for i in stub.investigations.values() if i.target == "slow-interrupted.example"]
    assert process.returncode == 130 and out == b""
    assert err.decode().strip().splitlines()[-1] == (
        f"stopped following; investigation {investigation.id} goes on. "
        f"Cancel it with: bev investigations cancel {investigation.id}")
    assert investigation.status == swarm_pb2.STATUS_RUNNING  # nothing was cancelled
    await stub.finish(investigation.id, swarm_pb2.STATUS_CANCELLED)
