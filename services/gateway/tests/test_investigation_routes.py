"""The investigation API (services/gateway/routes/swarm.py) and `bev investigate` / `bev investigations`,
over real HTTP, WebSocket and a real nats-server.

Without a swarm: a gateway with nothing behind it (validation happens before any call; an absent
swarm is 503 at once), the schema, and the CLI's refusals. In front of the real swarm service
(services/swarm/servicer.py, served in this process on its own bus with a real PostgreSQL and DBOS):
the WebSocket, SSE heartbeats and the gateway closing the service's watch when its client leaves,
and Ctrl-C in `bev investigate`. Those investigations are written through the swarm's own store (its
real tables, read back by the real service), since collectors and reasoning are not running here;
investigations run end to end, with their reports, evidence, SSE resume and pagination, are
tests/test_investigations.py's, on the real fleet."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
import websockets
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from typer.testing import CliRunner
from websockets.typing import Subprotocol

from bev.cli import app as cli
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer, Redis
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from bev.vocab import Tlp
from services.gateway.routes import swarm as swarm_routes
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port
from services.swarm import workflow
from services.swarm.scope import Scope
from services.swarm.servicer import Swarm, SwarmDeps, assemble
from services.swarm.settings import SwarmConfig
from services.swarm.store import Store
from services.swarm.targets import infer_target

VALID = {"target": "example.com", "mode": "democratic", "tlp": "amber",
         "budget": {"max_tool_calls": 40, "max_tokens": 20000, "max_wall_s": 90.5, "max_depth": 2},
         "scope": {"allow": ["example.com", "203.0.113.0/24"], "opsec": True},
         "seeds": ["https://example.com/about"]}
WATCH_SUBJECTS = ("bev.swarm.v1.WatchInvestigation", "bev.swarm.v1.WatchInvestigation.>")


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A bus of this module's own: no swarm another test serves may answer here."""
    with NatsServer(tmp_path_factory.mktemp("investigations-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bare(own_nats: NatsServer, fresh_database: Callable[[], str],
               redis_server: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with no service behind it, called with its admin key."""
    nc = NatsClient()
    await nc.connect(own_nats.url)
    try:
        async with gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
            yield http
    finally:
        await nc.close()


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
        async with websockets.connect(url, additional_headers={"Authorization": bare.headers["Authorization"]},
                                      open_timeout=5):
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


# --- in front of the real swarm ----------------------------------------------------------------

@dataclass
class RealSwarm:
    service: Swarm
    nats_url: str
    bus: NatsClient  # a caller's connection, also for watching the bus
    gateway: GatewayUnderTest  # in front of the service
    http: httpx.AsyncClient  # the gateway, with its admin key

    @property
    def store(self) -> Store:
        assert self.service.store is not None
        return self.service.store

    def ws(self, investigation_id: str, key: str | None = None) -> websockets.connect:
        """A WebSocket to the investigation's events, with `key` (default: the admin key)."""
        url = self.gateway.url.replace("http://", "ws://") + f"/api/v1/investigations/{investigation_id}/events/ws"
        return websockets.connect(url, additional_headers=self.gateway.auth(key), open_timeout=5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def real(tmp_path_factory: pytest.TempPathFactory, fresh_database: Callable[[], str],
               redis_server: Redis) -> AsyncIterator[RealSwarm]:
    """The swarm service on a bus of its own, on a new database, and the gateway in front of it. Its
    queue is polled once an hour: investigations started here stay queued rather than run (the
    collectors and reasoning they would call are not served). DBOS is one per process; the service's
    close() destroys it."""
    with NatsServer(tmp_path_factory.mktemp("swarm-nats")) as server:
        clients_nc = await nats.connect(server.url)  # what the service calls other services over
        try:
            # The fleet's supervisor creates the stream the service publishes its events on; here the test does.
            await clients_nc.jetstream().add_stream(name="BEV_EVENTS", subjects=["bev.events.>"])
            service = await assemble(InstanceInfo(service="swarm"), SwarmConfig(queue_poll_s=3600), SwarmDeps(
                fresh_database(), CollectorsClient.over_nats(clients_nc), EmbeddingsClient.over_nats(clients_nc),
                ReasoningClient.over_nats(clients_nc), tmp_path_factory.mktemp("swarm-data"), clients_nc))
            async with serving_on_nats(service, server.url) as bus, \
                    gateway_on_free_port(bus, fresh_database(), redis_server.url) as gateway, \
                    httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
                yield RealSwarm(service, server.url, bus, gateway, http)
        finally:
            await clients_nc.close()


async def _investigation(store: Store, target: str, events: Sequence[tuple[str, dict[str, Any]]] = ()) -> str:
    """A queued investigation of `target` with `events`, written as the service writes one."""
    investigation_id = str(uuid.uuid4())
    typed = infer_target(target, "")
    await store.create(id=investigation_id, target=typed.value, target_type=typed.kind, stix_type=typed.stix_type,
                       mode="hybrid", budget={"max_tool_calls": 200, "max_tokens": 200000, "max_wall_s": 900.0,
                                              "max_depth": 2},
                       scope={**Scope.build(typed, []).to_dict(), "opsec": False}, seeds=[], tlp="clear")
    for kind, data in events:
        await store.add_event(investigation_id, kind, data)
    return investigation_id


async def _finish(store: Store, investigation_id: str) -> list[int]:
    """Closes it as the service closes a cancelled one (its report and `done` event); all its event ids."""
    assert await workflow.finish(investigation_id, "cancelled", "cancelled by the analyst", {}) == "cancelled"
    return [event.id for event in await store.events(investigation_id)]


EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("phase", {"phase": "ingestion", "progress": 0.05}), ("plan", {"agent": "leader", "tasks": []}),
    ("tool_call", {"agent": "worker-1", "tool": "collectors.Collect"}), ("vote", {"agent": "a1"})]


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


async def test_sse_sends_heartbeats_while_idle_then_the_events_to_done(real: RealSwarm,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swarm_routes, "HEARTBEAT_S", 0.2)
    investigation_id = await _investigation(real.store, "sse.example.com")
    path = f"/api/v1/investigations/{investigation_id}/events"
    running = asyncio.create_task(_sse(real.http, path))
    await asyncio.sleep(0.7)  # idle: heartbeats
    for kind, data in EVENTS:
        await real.store.add_event(investigation_id, kind, data)
    ids = await _finish(real.store, investigation_id)
    frames = await asyncio.wait_for(running, 10)
    assert frames[0] == {"comment": "keep-alive"} and frames[1] == {"comment": "keep-alive"}
    events = [f for f in frames if "event" in f]
    assert [f["event"] for f in events] == [kind for kind, _ in EVENTS] + ["done"]
    assert [int(f["id"]) for f in events] == ids
    first = json.loads(events[0]["data"])
    assert first["id"] == ids[0] and first["investigation_id"] == investigation_id and first["kind"] == "phase"
    assert first["data"] == EVENTS[0][1] and first["at"].endswith("Z")
    assert json.loads(events[-1]["data"])["data"]["status"] == "cancelled"
    assert all(set(f) == {"comment"} or set(f) == {"id", "event", "data"} for f in frames)

    # Last-Event-ID (a reconnecting browser) wins over ?after=.
    resumed = await _sse(real.http, path, headers={"Last-Event-ID": str(ids[2])}, params={"after": str(ids[0])})
    assert [int(f["id"]) for f in resumed if "id" in f] == ids[3:]


async def test_events_over_websocket(real: RealSwarm) -> None:
    investigation_id = await _investigation(real.store, "ws.example.com", EVENTS)
    ids = await _finish(real.store, investigation_id)
    async with real.ws(investigation_id) as ws:  # nothing sent: from the first event
        received = [json.loads(message) async for message in ws]
        assert ws.close_code == 1000
    assert [e["kind"] for e in received] == [kind for kind, _ in EVENTS] + ["done"]
    assert [e["id"] for e in received] == ids
    assert received[0]["investigation_id"] == investigation_id and received[0]["data"] == EVENTS[0][1]
    assert received[0]["at"].endswith("Z") and received[-1]["data"]["status"] == "cancelled"

    async with real.ws(investigation_id) as ws:
        await ws.send(json.dumps({"after": ids[2]}))
        resumed = [json.loads(message) async for message in ws]
        assert ws.close_code == 1000
    assert [e["id"] for e in resumed] == ids[3:]

    async with real.ws(investigation_id) as ws:
        await ws.send("resume please")
        refusal = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008 and refusal["code"] == "INVALID_ARGUMENT" and "after" in refusal["error"]

    with pytest.raises(websockets.InvalidStatus) as missing:
        async with real.ws("nope"):
            pass
    assert missing.value.response.status_code == 404


async def test_a_websocket_follows_a_live_investigation_until_done(real: RealSwarm) -> None:
    investigation_id = await _investigation(real.store, "live-ws.example.com", EVENTS[:1])
    async with real.ws(investigation_id) as ws:
        await ws.send(json.dumps({"after": 0}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "phase"
        await real.store.add_event(investigation_id, "plan", {"agent": "leader", "tasks": []})
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "plan"
        await _finish(real.store, investigation_id)
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "done"
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1000


async def test_a_watcher_sees_an_event_as_soon_as_the_swarm_publishes_it(real: RealSwarm) -> None:
    """Watches are woken by the event on the bus (services/swarm/wakeups.py), not by their poll, which
    falls back to once a second: each event emitted as the swarm emits one (row, then JetStream)
    reaches a WebSocket well inside that."""
    assert real.service.wakeups.live and real.service.engine is not None
    deps = real.service.engine.deps
    investigation_id = await _investigation(real.store, "wakeup.example.com", EVENTS[:1])
    async with real.ws(investigation_id) as ws:
        await ws.send(json.dumps({"after": 0}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "phase"
        await asyncio.sleep(0.3)  # the watch is idle, waiting on the bus
        delays = []
        for n in range(5):
            sent = time.monotonic()
            await deps.emit(investigation_id, "plan", {"agent": "leader", "tasks": [], "n": n})
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]["n"] == n
            delays.append(time.monotonic() - sent)
            await asyncio.sleep(0.05)
    assert max(delays) < 0.5, delays  # the fallback poll alone would average 0.5 s


async def test_a_browser_websocket_sends_its_key_as_a_subprotocol(real: RealSwarm) -> None:
    """Browsers cannot set headers on a WebSocket: the web UI offers ["bev.bearer", key], and the
    gateway must pick `bev.bearer` or the browser fails the connection."""
    investigation_id = await _investigation(real.store, "subprotocol.example.com", EVENTS[:1])
    url = real.gateway.url.replace("http://", "ws://") + f"/api/v1/investigations/{investigation_id}/events/ws"
    async with websockets.connect(url, subprotocols=[Subprotocol("bev.bearer"), Subprotocol(real.gateway.admin_key)],
                                  open_timeout=5) as ws:
        assert ws.subprotocol == "bev.bearer"
        await ws.send(json.dumps({"after": 0}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "phase"
    for offered in (["bev.bearer", "bev_nobody_0000"], [real.gateway.admin_key, "bev.bearer"]):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, subprotocols=[Subprotocol(p) for p in offered], open_timeout=5):
                pass
        assert refused.value.response.status_code == 401, offered


class WatchSpy:
    """Sees, on the bus, the WatchInvestigation requests the gateway makes and the cancel message a
    caller sends when it stops reading (bev.rpc.nats_transport: `<reply>.cancel`), and what the
    service publishes on the stream after that."""

    def __init__(self, bus: NatsClient) -> None:
        self.bus = bus
        self.requests: asyncio.Queue[Msg] = asyncio.Queue()
        self.subscriptions: list[Any] = []

    async def __aenter__(self) -> WatchSpy:
        for subject in WATCH_SUBJECTS:
            self.subscriptions.append(await self.bus.subscribe(subject, cb=self.requests.put))
        await self.bus.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        for subscription in self.subscriptions:
            await subscription.unsubscribe()

    async def stream_of(self, investigation_id: str) -> tuple[asyncio.Queue[Msg], list[Msg]]:
        """The next watch of `investigation_id`: a queue of its cancel messages, and a list of what the
        service sends on it."""
        while True:
            request = await asyncio.wait_for(self.requests.get(), 5)
            if investigation_id.encode() in request.data:
                break
        assert request.reply
        cancels: asyncio.Queue[Msg] = asyncio.Queue()
        sent: list[Msg] = []

        async def keep(msg: Msg) -> None:
            sent.append(msg)

        self.subscriptions.append(await self.bus.subscribe(f"{request.reply}.cancel", cb=cancels.put))
        self.subscriptions.append(await self.bus.subscribe(request.reply, cb=keep))
        await self.bus.flush()
        return cancels, sent


async def _until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _sends(real: RealSwarm, investigation_id: str, sent: list[Msg]) -> None:
    """A new event reaches the stream: the service is watching (and the spy sees what it sends)."""
    before = len(sent)
    await real.store.add_event(investigation_id, "entity", {"name": "someone is listening"})
    await _until(lambda: len(sent) > before)


async def _stops_sending(real: RealSwarm, investigation_id: str, sent: list[Msg]) -> None:
    """A new event, and nothing more on the stream: the service stopped watching."""
    before = len(sent)
    await real.store.add_event(investigation_id, "entity", {"name": "nobody is listening"})
    await asyncio.sleep(4 * 0.25 + 0.5)  # four of the service's polls (WATCH_POLL_S)
    assert len(sent) == before


async def test_a_client_that_leaves_stops_the_watch(real: RealSwarm) -> None:
    investigation_id = await _investigation(real.store, "leave.example.com", [("plan", {"summary": "look around"})])
    [first] = [event.id for event in await real.store.events(investigation_id)]
    async with WatchSpy(real.bus) as spy:
        async with real.http.stream("GET", f"/api/v1/investigations/{investigation_id}/events") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == f"id: {first}"
            cancels, sent = await spy.stream_of(investigation_id)
            await _sends(real, investigation_id, sent)
            while await asyncio.wait_for(anext(lines), 5) != "event: entity":  # the client got it too
                pass
            assert cancels.empty()
        await asyncio.wait_for(cancels.get(), 5)  # the gateway cancelled the RPC stream
        await _stops_sending(real, investigation_id, sent)

        async with real.ws(investigation_id) as ws:
            await ws.send(json.dumps({"after": 0}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "plan"
            cancels, sent = await spy.stream_of(investigation_id)
            await _sends(real, investigation_id, sent)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "entity"
            assert cancels.empty()
        await asyncio.wait_for(cancels.get(), 5)
        await _stops_sending(real, investigation_id, sent)
    await _finish(real.store, investigation_id)


# --- teams and TLP ------------------------------------------------------------------------------

async def test_another_teams_investigation_is_not_found(real: RealSwarm) -> None:
    gateway, http = real.gateway, real.http
    owner = await gateway.new_key(["read", "write"], "inv-team-a")
    stranger = await gateway.new_key(["read", "write"], "inv-team-b")
    cleared_low = await gateway.new_key(["read", "write"], "inv-team-a", max_tlp=Tlp.GREEN)
    started = await http.post("/api/v1/investigations", json={"target": "teams.example.com", "tlp": "amber"},
                              headers=gateway.auth(owner))
    assert started.status_code == 202, started.text
    investigation_id = started.json()["id"]
    path = f"/api/v1/investigations/{investigation_id}"
    for key in (stranger, cleared_low):  # another team's; or its own team's above the key's TLP
        for method, url in (("GET", path), ("GET", f"{path}/report"), ("GET", f"{path}/report.md"),
                            ("GET", f"{path}/report.stix"), ("GET", f"{path}/events"), ("DELETE", path)):
            response = await http.request(method, url, headers=gateway.auth(key))
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["code"] == "NOT_FOUND"
        with pytest.raises(websockets.InvalidStatus) as hidden:
            async with real.ws(investigation_id, key):
                pass
        assert hidden.value.response.status_code == 404
        listed = (await http.get("/api/v1/investigations", headers=gateway.auth(key))).json()["investigations"]
        assert investigation_id not in {i["id"] for i in listed}
    for seer in (owner, None):  # its team, and an admin key
        assert (await http.get(path, headers=gateway.auth(seer))).status_code == 200
        listed = (await http.get("/api/v1/investigations", headers=gateway.auth(seer))).json()["investigations"]
        assert investigation_id in {i["id"] for i in listed}
    refused = await http.post("/api/v1/investigations", json={"target": "teams.example.com", "tlp": "red"},
                              headers=gateway.auth(cleared_low))
    assert refused.status_code == 403 and "TLP" in refused.json()["error"], refused.text  # above its own label
    cancelled = await http.delete(path, headers=gateway.auth(owner))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text


async def test_another_teams_workflow_is_not_found(real: RealSwarm) -> None:
    gateway, http = real.gateway, real.http
    owner = await gateway.new_key(["read", "write"], "wf-team-a")
    stranger = await gateway.new_key(["read", "write"], "wf-team-b")
    submitted = await http.post("/api/v1/workflows", headers=gateway.auth(owner), json={
        "name": "team files", "steps": [{"id": "files", "type": "file_operations", "operation": "list"}]})
    assert submitted.status_code == 202, submitted.text
    path = submitted.headers["location"]
    for method in ("GET", "DELETE"):
        hidden = await http.request(method, path, headers=gateway.auth(stranger))
        assert hidden.status_code == 404 and hidden.json()["code"] == "NOT_FOUND", (method, hidden.text)
    listed = (await http.get("/api/v1/workflows", headers=gateway.auth(stranger))).json()
    assert listed == {"workflows": [], "next_cursor": ""}
    for seer in (owner, None):  # its team, and an admin key
        assert (await http.get(path, headers=gateway.auth(seer))).status_code == 200
        listed = (await http.get("/api/v1/workflows", headers=gateway.auth(seer))).json()
        assert submitted.json()["id"] in {w["id"] for w in listed["workflows"]}


async def test_lists_of_the_swarm_page_with_a_cursor(real: RealSwarm) -> None:
    ids = [await _investigation(real.store, f"page-{n}.example.com") for n in range(3)]
    seen: list[str] = []
    cursor = ""
    while True:
        page = (await real.http.get("/api/v1/investigations", params={"limit": 2, "cursor": cursor})).json()
        seen += [i["id"] for i in page["investigations"]]
        cursor = page["next_cursor"]
        assert isinstance(cursor, str) and (cursor or len(page["investigations"]) <= 2)
        if not cursor:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    roles = (await real.http.get("/api/v1/swarm/roles")).json()
    names = [role["name"] for role in roles["roles"]]
    assert roles["next_cursor"] == "" and names == sorted(names) and len(names) > 2
    first = (await real.http.get("/api/v1/swarm/roles", params={"limit": 2})).json()
    rest = (await real.http.get("/api/v1/swarm/roles", params={"limit": 100, "cursor": first["next_cursor"]})).json()
    assert [r["name"] for r in first["roles"] + rest["roles"]] == names and rest["next_cursor"] == ""
    agents = (await real.http.get("/api/v1/agents", params={"limit": 1})).json()
    assert set(agents) == {"roles", "agents", "next_cursor"} and agents["roles"]
    bad = await real.http.get("/api/v1/swarm/roles", params={"cursor": "%%%"})
    assert bad.status_code == 422 and "cursor" in bad.json()["error"]  # not hex: the schema refuses it
    for investigation_id in ids:
        assert await _finish(real.store, investigation_id)  # closed with its `done` event


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
    """The CLI in a thread (its own event loop), this loop serving the swarm meanwhile."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env={"BEV_NATS__URL": nats_url, "COLUMNS": "200"})


async def test_ctrl_c_stops_following_and_leaves_the_investigation_going(real: RealSwarm) -> None:
    bev = Path(sys.executable).parent / "bev"
    process = await asyncio.create_subprocess_exec(
        str(bev), "investigate", "interrupted.example.com", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "BEV_NATS__URL": real.nats_url},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a shell, even under CI
    assert process.stderr is not None
    try:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line.startswith(b"investigation ") and b": interrupted.example.com (domain)" in line, line
        investigation_id = line.split()[1].rstrip(b":").decode()
        event = await real.store.add_event(investigation_id, "phase", {"phase": "ingestion", "progress": 0.05})
        while f"[{event.id}] phase ingestion".encode() not in await asyncio.wait_for(process.stderr.readline(), 30):
            pass
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130 and out == b""
    assert err.decode().strip().splitlines()[-1] == (
        f"stopped following; investigation {investigation_id} goes on. "
        f"Cancel it with: bev investigations cancel {investigation_id}")
    row = await real.store.get(investigation_id)
    assert row is not None and row.status == "queued" and not row.cancel_requested  # nothing was cancelled

    # What the message says to do, on the real service.
    shown = await _invoke(real.nats_url, "investigations", "show", investigation_id)
    assert shown.exit_code == 0 and "status queued" in shown.output, shown.output
    listed = await _invoke(real.nats_url, "investigations", "list", "--status", "queued", "--json")
    assert listed.exit_code == 0 and investigation_id in {i["id"] for i in json.loads(listed.stdout)["investigations"]}
    cancelled = await _invoke(real.nats_url, "investigations", "cancel", investigation_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip() == f"investigation {investigation_id}: cancelled"
    missing = await _invoke(real.nats_url, "investigations", "show", "nope")
    assert missing.exit_code == 1 and missing.stderr.strip() == "bev: NOT_FOUND: no investigation 'nope'"
