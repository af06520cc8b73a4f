"""Who may call what, over real HTTP against the real guard (keys in PostgreSQL, limits in Redis):

- every route of the table, walked from the OpenAPI schema: 401 without a key (only /healthz is
  open), 403 for a key without the route's scope, and each route's scope as the API promises it;
- the lists whose service does not page, paged by the gateway;
- the hourly request quota (429 with Retry-After and RateLimit-* headers) and the daily LLM token
  budget, spent with what the real reasoning and embeddings services report (streams included);
- every service request that carries an Access carries the caller's;
- another team's documents and ingest jobs answer 404, and nothing above a key's TLP is shown;
- the official `openai` client with a BEV key;
- a 50 MB body is refused with 413 while the gateway holds about one body limit of it."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, get_type_hints

import httpx
import httpx2
import nats
import openai
import pytest
import pytest_asyncio
import websockets
from fastapi.routing import APIWebSocketRoute
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bev.access import split
from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from bev.engines import NatsServer, Redis
from bev.manifest import load_manifest
from bev.rpc import InstanceInfo
from bev.rpc.nats_transport import STREAM_END_HEADER
from bev.swarm.v1 import swarm_pb2
from bev.testing.serving import serving_on_nats
from bev.vocab import Tlp
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.servicer import EmbeddingsDeps
from services.embeddings.servicer import assemble as assemble_embeddings
from services.embeddings.settings import EmbeddingsConfig
from services.gateway import api
from services.gateway.clients import Clients
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port
from services.monitoring.servicer import Monitoring
from services.monitoring.settings import Settings as MonitoringSettings
from services.reasoning.testing import ReasoningOnNats

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The scope of every route, as the API promises it: reads READ, what makes, changes, deletes or
# starts work WRITE, the model routes WRITE (and the LLM budget), keys, audit and raw Cypher ADMIN.
SCOPES = {
    ("GET", "/api/v1/services"): "read",
    ("POST", "/api/v1/reasoning/generate"): "write",
    ("POST", "/api/v1/reasoning/analyze"): "write",
    ("GET", "/api/v1/reasoning/router"): "read",
    ("GET", "/v1/models"): "read",
    ("POST", "/v1/chat/completions"): "write",
    ("POST", "/api/v1/embeddings/embed"): "write",
    ("POST", "/v1/embeddings"): "write",
    ("POST", "/api/v1/documents"): "write",
    ("GET", "/api/v1/documents/jobs/{job_id}"): "read",
    ("GET", "/api/v1/documents/{document_id}"): "read",
    ("DELETE", "/api/v1/documents/{document_id}"): "write",
    ("GET", "/api/v1/search"): "read",
    ("GET", "/api/v1/corpus/stats"): "read",
    ("POST", "/api/v1/indicators/extract"): "read",
    ("GET", "/api/v1/collectors"): "read",
    ("POST", "/api/v1/collectors/{name}/collect"): "write",
    ("POST", "/api/v1/files"): "write",
    ("GET", "/api/v1/graph/entities/{entity_id}"): "read",
    ("GET", "/api/v1/graph/neighborhood"): "read",
    ("POST", "/api/v1/graph/query"): "admin",
    ("POST", "/api/v1/graph/export"): "read",
    ("GET", "/api/v1/swarm/roles"): "read",
    ("POST", "/api/v1/investigations"): "write",
    ("GET", "/api/v1/investigations"): "read",
    ("GET", "/api/v1/investigations/{investigation_id}"): "read",
    ("DELETE", "/api/v1/investigations/{investigation_id}"): "write",
    ("GET", "/api/v1/investigations/{investigation_id}/report"): "read",
    ("GET", "/api/v1/investigations/{investigation_id}/report.md"): "read",
    ("GET", "/api/v1/investigations/{investigation_id}/report.stix"): "read",
    ("GET", "/api/v1/investigations/{investigation_id}/events"): "read",
    ("POST", "/api/v1/workflows"): "write",
    ("GET", "/api/v1/workflows"): "read",
    ("GET", "/api/v1/workflows/{workflow_id}"): "read",
    ("DELETE", "/api/v1/workflows/{workflow_id}"): "write",
    ("GET", "/api/v1/evidence/{evidence_id}"): "read",
    ("GET", "/api/v1/agents"): "read",
    ("GET", "/api/v1/avatar/{investigation_id}/state"): "read",
    ("PUT", "/api/v1/avatar/{investigation_id}/personality"): "write",
    ("POST", "/api/v1/avatar/speak"): "read",
    ("GET", "/api/v1/alerts"): "read",
    ("POST", "/api/v1/ops/ask"): "admin",
    ("POST", "/api/v1/keys"): "admin",
    ("GET", "/api/v1/keys"): "admin",
    ("GET", "/api/v1/keys/{key_id}"): "admin",
    ("POST", "/api/v1/keys/{key_id}/revoke"): "admin",
    ("GET", "/api/v1/audit"): "admin",
}
OPEN = {("GET", "/healthz")}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


@dataclass
class Keys:
    gateway: GatewayUnderTest
    read: str
    write: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return self.gateway.auth(key)


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _error(response: httpx.Response) -> tuple[str, str]:
    """(message, code or type) of an error in the route's shape."""
    body = response.json()
    if response.request.url.path.startswith("/v1/"):
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["message"], body["error"]["type"]
    return body["error"], body["code"]


def _websocket_paths() -> list[str]:
    modules = [m for m in vars(api).values() if isinstance(m, ModuleType) and hasattr(m, "router")]
    return [route.path for m in modules for route in m.router.routes if isinstance(route, APIWebSocketRoute)]


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A bus with nothing on it: the guard and the scope checks answer before any service would."""
    with NatsServer(tmp_path_factory.mktemp("access-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bare(own_nats: NatsServer, fresh_database: Callable[[], str],
               redis_server: Redis) -> AsyncIterator[tuple[Keys, httpx.AsyncClient]]:
    """The gateway with no service behind it, a read-only and a write-only key, and a client without a key."""
    nc = NatsClient()
    await nc.connect(own_nats.url)
    try:
        async with gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=30, trust_env=False) as http:
            keys = Keys(gateway, await gateway.new_key(["read"], "walkers"), await gateway.new_key(["write"], "walkers"))
            yield keys, http
    finally:
        await nc.close()


# --- the route table ---------------------------------------------------------------------------

async def test_every_route_declares_the_scope_the_api_promises(bare: tuple[Keys, httpx.AsyncClient]) -> None:
    keys, http = bare
    schema = (await http.get("/openapi.json", headers=keys.auth())).json()
    declared = {(method.upper(), path): operation.get("x-bev-scope")
                for path, operations in schema["paths"].items() for method, operation in operations.items()}
    assert {route: scope for route, scope in declared.items() if route not in OPEN} == SCOPES
    assert all(declared[route] is None for route in OPEN)
    assert schema["paths"]["/healthz"]["get"]["security"] == [] and schema["security"] == [{"apiKey": []}]


async def test_without_a_key_every_route_but_healthz_is_401(bare: tuple[Keys, httpx.AsyncClient]) -> None:
    keys, http = bare
    for method, path in [*SCOPES, ("GET", "/api/v1/nothing-here"), ("GET", "/openapi.json"), ("GET", "/docs")]:
        for headers in ({}, {"Authorization": "Bearer bev_nobody_0000"}, {"Authorization": f"Basic {keys.read}"}):
            response = await http.request(method, _filled(path), json={} if method == "POST" else None, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            message, code = _error(response)
            assert code in ("UNAUTHENTICATED", "authentication_error") and "key" in message
            assert "ratelimit-limit" not in response.headers  # no key, no bucket
    health = await http.get("/healthz")
    assert health.status_code == 503 and health.json()["code"] == "UNAVAILABLE"  # open; no monitoring here


async def test_a_key_without_the_routes_scope_is_403_before_the_body_is_read(
    bare: tuple[Keys, httpx.AsyncClient],
) -> None:
    keys, http = bare
    for (method, path), scope in SCOPES.items():
        for key, held in ((keys.read, "read"), (keys.write, "write")):
            response = await http.request(method, _filled(path), json={} if method == "POST" else None,
                                          headers=keys.auth(key))
            if held == scope:
                assert response.status_code not in (401, 403), (method, path, response.text)
                continue
            assert response.status_code == 403, (method, path, held, response.text)
            message, code = _error(response)
            assert code in ("PERMISSION_DENIED", "permission_error") and f"'{scope}' scope" in message
        admin = await http.request(method, _filled(path), json={} if method == "POST" else None, headers=keys.auth())
        assert admin.status_code not in (401, 403), (method, path, admin.text)


async def test_websockets_need_a_key_and_the_read_scope(bare: tuple[Keys, httpx.AsyncClient]) -> None:
    keys, http = bare
    paths = _websocket_paths()
    assert sorted(paths) == ["/api/v1/avatar/{investigation_id}/ws", "/api/v1/investigations/{investigation_id}/events/ws"]
    for path in paths:
        url = str(http.base_url).replace("http://", "ws://") + _filled(path)
        # uvicorn lets an app answer a handshake with any HTTP status: the same 401 and 403 as over HTTP.
        for headers, status in (({}, 401), (keys.auth("bev_nobody_0000"), 401), (keys.auth(keys.write), 403)):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url, additional_headers=headers, open_timeout=5):
                    pass
            assert refused.value.response.status_code == status, (path, headers)
        with pytest.raises(websockets.InvalidStatus) as unavailable:  # past the checks: no service here
            async with websockets.connect(url, additional_headers=keys.auth(keys.read), open_timeout=5):
                pass
        assert unavailable.value.response.status_code == 503, path


async def test_every_body_example_in_the_schema_is_one_its_route_takes(bare: tuple[Keys, httpx.AsyncClient]) -> None:
    keys, http = bare
    schema = (await http.get("/openapi.json", headers=keys.auth())).json()
    components = schema["components"]["schemas"]
    posted = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            model = components[body["schema"]["$ref"].rsplit("/", 1)[-1]]
            documented = model.get("examples") or [p for p in model["properties"].values() if "examples" in p]
            assert documented, f"{method.upper()} {path}: its body has no example"
            for example in model.get("examples", []):
                # Valid, so past the checks to the service, which is not here: 503, not a 400 or 422.
                response = await http.request(method, path, json=example, headers=keys.auth())
                assert response.status_code == 503, (path, example, response.text)
                posted += 1
            if path in ("/api/v1/investigations", "/v1/chat/completions", "/api/v1/reasoning/generate"):
                answer = next(r for status, r in operation["responses"].items() if status.startswith("2"))
                assert "example" in answer["content"]["application/json"], path
    assert posted >= 12


class BusSpy:
    """Stands in for every service on the bare gateway's bus: records each request (decoded by its
    subject) and answers it with an empty response (a stream: its end), so that routes go on to the
    calls that follow (GET .../events reads the investigation, then watches it)."""

    def __init__(self) -> None:
        self.methods = {m.subject: m for client in get_type_hints(Clients).values()
                        for m in client.SERVICE.methods.values()}
        self.requests: list[tuple[str, Message]] = []
        self.answers: dict[str, Message] = {  # where an empty response is not one the route can show
            "GetReport": swarm_pb2.Report(content="{}"),
            "ExportStix": collectors_pb2.ExportStixResponse(bundle_json='{"type": "bundle", "objects": []}'),
        }

    async def answer(self, nc: NatsClient, msg: Msg) -> None:
        method = self.methods.get(".".join(msg.subject.split(".")[:4]))
        if method is None or not msg.reply:
            return
        self.requests.append((method.name, method.request_type.FromString(msg.data)))
        if method.server_streaming:
            await nc.publish(msg.reply, b"", headers={STREAM_END_HEADER: "1"})
        else:
            answer = self.answers.get(method.name, method.response_type())
            await nc.publish(msg.reply, answer.SerializeToString())


async def test_every_request_that_carries_access_carries_the_callers(
    own_nats: NatsServer, bare: tuple[Keys, httpx.AsyncClient],
) -> None:
    keys, http = bare
    key = await keys.gateway.new_key(["read", "write"], "spied", max_tlp=Tlp.GREEN)
    parts = split(key)
    assert parts is not None
    expected = common_pb2.Access(team="spied", max_tlp=common_pb2.TLP_GREEN, key_id=parts[0])
    schema = (await http.get("/openapi.json", headers=keys.auth())).json()
    spy = BusSpy()
    bus = await nats.connect(own_nats.url)
    subscription = await bus.subscribe("bev.>", cb=functools.partial(spy.answer, bus))
    await bus.flush()
    try:
        for (method, path), scope in SCOPES.items():
            if scope == "admin":
                continue
            operation = schema["paths"][path][method.lower()]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            example = schema["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]].get("examples", [{}])[0] \
                if body else None
            files = {"file": ("notes.txt", b"spied upon", "text/plain")} if path == "/api/v1/documents" else None
            await http.request(method, _filled(path), json=example, files=files, headers=keys.auth(key),
                               params={"q": "x", "entity_id": "x"} if method == "GET" else None)
        url = str(http.base_url).replace("http://", "ws://") + "/api/v1/investigations/x/events/ws"
        async with websockets.connect(url, additional_headers=keys.auth(key), open_timeout=5) as ws:
            await ws.send('{"after": 0}')
            assert [message async for message in ws] == [] and ws.close_code == 1000  # the watch ended at once
        graph = await http.post("/api/v1/graph/query", json={"cypher": "RETURN 1"}, headers=keys.auth())
        assert graph.status_code == 200, graph.text
    finally:
        await subscription.unsubscribe()
        await bus.close()

    carrying: list[tuple[str, common_pb2.Access]] = [
        (name, request.access) for name, request in spy.requests  # type: ignore[attr-defined]
        if "access" in request.DESCRIPTOR.fields_by_name]
    assert {name for name, _ in carrying} == {
        "StartInvestigation", "GetInvestigation", "ListInvestigations", "CancelInvestigation", "GetReport",
        "WatchInvestigation", "GetEvidence", "ListAgents", "SubmitWorkflow", "GetWorkflow", "ListWorkflows",
        "CancelWorkflow", "SubmitIngest", "GetIngestJob", "Search", "GetDocument", "DeleteDocument", "GetEntity",
        "Neighborhood", "GraphQuery", "ExportStix", "GetState", "SetPersonality"}
    [admin] = [access for name, access in carrying if name == "GraphQuery"]  # the admin key's: every team
    assert admin.team == "" and admin.max_tlp == common_pb2.TLP_RED and admin.key_id
    assert all(access == expected for name, access in carrying if name != "GraphQuery"), carrying


# --- limits ------------------------------------------------------------------------------------

async def test_over_the_hourly_quota_is_429_with_retry_after(bare: tuple[Keys, httpx.AsyncClient]) -> None:
    keys, http = bare
    key = await keys.gateway.new_key(["read"], "quota", requests_per_hour=5)
    answers = [await http.get("/api/v1/agents" if n % 2 else "/v1/models", headers=keys.auth(key)) for n in range(10)]
    assert [a.status_code for a in answers] == [503] * 5 + [429] * 5  # nothing serves here: 503 until the quota
    assert [a.headers["ratelimit-remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    for answer in answers:
        assert answer.headers["ratelimit-limit"] == "5" and answer.headers["ratelimit-policy"] == "5;w=3600"
    for refused in answers[5:]:
        retry = int(refused.headers["retry-after"])
        assert 600 <= retry <= 720  # one request comes back every 3600/5 s
        assert refused.headers["ratelimit-remaining"] == "0" and abs(int(refused.headers["ratelimit-reset"]) - retry) <= 1
        message, code = _error(refused)
        assert code in ("RESOURCE_EXHAUSTED", "rate_limit_error") and "5 requests per hour" in message
    other = await http.get("/v1/models", headers=keys.auth(keys.read))  # a bucket per key
    assert other.status_code == 503


async def test_every_audited_call_is_one_row_and_one_event_in_order(
        bare: tuple[Keys, httpx.AsyncClient], own_nats: NatsServer) -> None:
    keys, http = bare
    key = await keys.gateway.new_key(["write"], "audit-order")
    parts = split(key)
    assert parts is not None
    key_id = parts[0]
    events: list[dict[str, Any]] = []
    all_heard = asyncio.Event()
    # Calls at once (they share batches), one with a NUL in its path (400: no column can hold it).
    paths = [f"/api/v1/avatar/inv-{n}/personality" for n in range(30)] + ["/api/v1/avatar/a%00b/personality"]
    listener = await nats.connect(own_nats.url)
    try:
        async def heard(msg: Msg) -> None:
            body = json.loads(msg.data)
            if body["key_id"] == key_id:
                events.append(body | {"subject": msg.subject})
                if len(events) >= len(paths):
                    all_heard.set()

        await listener.subscribe("bev.events.audit.>", cb=heard)
        await listener.flush()
        answers = await asyncio.gather(*(http.put(path, json={"traits": {}}, headers=keys.auth(key)) for path in paths))
        await asyncio.wait_for(all_heard.wait(), 15)
        await asyncio.sleep(0.2)  # none extra comes
    finally:
        await listener.close()
    rows = (await http.get("/api/v1/audit", params={"key_id": key_id, "limit": 500}, headers=keys.auth())).json()
    by_id = {row["id"]: row for row in rows["entries"]}
    assert len(events) == len(by_id) == len(paths)
    assert [e["id"] for e in events] == sorted(by_id)  # published in the order written
    for event in events:
        subject = event.pop("subject")
        assert event == by_id[event["id"]] and subject == "bev.events.audit.call"
    assert sorted(e["path"] for e in events) == sorted([*paths[:-1], "/api/v1/avatar/a\ufffdb/personality"])
    assert sorted(e["status"] for e in events) == sorted(a.status_code for a in answers)


async def test_a_body_of_50_mb_is_413_with_memory_bounded(bare: tuple[Keys, httpx.AsyncClient]) -> None:
    keys, http = bare
    chunk = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(50 * 16):
            yield chunk

    for path, limit in (("/api/v1/indicators/extract", 1024 * 1024), ("/api/v1/documents", 3 * 1024 * 1024)):
        tracemalloc.start()
        try:
            response = await http.post(path, content=body(), headers={**keys.auth(), "content-type": "application/json"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413, response.text
        assert response.json() == {"error": f"body over {limit} bytes", "code": "RESOURCE_EXHAUSTED"}
        assert peak < 4 * limit, f"{path}: {peak} bytes held for a {limit}-byte limit"


# --- with services behind the gateway ------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(nats_server: NatsServer, fresh_database: Callable[[], str], redis_server: Redis,
                 minilm: SentenceEmbedder, reasoning_on_nats: ReasoningOnNats,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[GatewayUnderTest, httpx.AsyncClient]]:
    """The gateway in front of the real embeddings (MiniLM, PostgreSQL) and reasoning (llama.cpp)
    services, on the session's bus; a client without a key."""
    config = EmbeddingsConfig()
    embeddings = await assemble_embeddings(
        InstanceInfo(service="embeddings"), config,
        EmbeddingsDeps(fresh_database(), tmp_path_factory.mktemp("access-embeddings"),
                       ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)))
    discovery = await nats.connect(nats_server.url)  # the monitoring service's own connection, as in the fleet
    monitoring = Monitoring(InstanceInfo(service="monitoring"), discovery, MonitoringSettings(),
                            load_manifest().service_names())
    try:
        async with serving_on_nats(monitoring, nats_server.url), serving_on_nats(embeddings, nats_server.url) as nc, \
                gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=120, trust_env=False) as http:
            yield gateway, http
    finally:
        await discovery.close()


async def _all_pages(http: httpx.AsyncClient, gateway: GatewayUnderTest, path: str, field: str) -> list[dict[str, Any]]:
    """Every item of a list route, one per page."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await http.get(path, params={"limit": 1, "cursor": cursor}, headers=gateway.auth())
        assert page.status_code == 200, page.text
        assert len(page.json()[field]) == 1
        items += page.json()[field]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return items


async def test_lists_the_services_do_not_page_are_paged_by_the_gateway(
    served: tuple[GatewayUnderTest, httpx.AsyncClient],
) -> None:
    gateway, http = served
    whole = (await http.get("/api/v1/services", headers=gateway.auth())).json()
    assert whole["next_cursor"] == "" and whole["missing"] and whole["status"] == "STATUS_DEGRADED"
    by_service = [(i["service"], i["instance"]) for i in whole["instances"]]
    assert by_service == sorted(by_service) and {"embeddings", "monitoring", "reasoning"} <= {s for s, _ in by_service}
    paged = await _all_pages(http, gateway, "/api/v1/services", "instances")
    assert {(i["service"], i["instance"]) for i in paged} == set(by_service) and len(paged) == len(by_service)

    backends = (await http.get("/api/v1/reasoning/router", headers=gateway.auth())).json()
    names = [b["name"] for b in backends["backends"]]
    assert names == ["llama.cpp-0", "llama.cpp-1"] and backends["next_cursor"] == ""
    assert [b["name"] for b in await _all_pages(http, gateway, "/api/v1/reasoning/router", "backends")] == names
    for cursor, limit in (("not a cursor", 10), ("", 0), ("", 501)):
        refused = await http.get("/api/v1/services", params={"cursor": cursor, "limit": limit}, headers=gateway.auth())
        assert refused.status_code == 422, refused.text  # the schema refuses a cursor that is not hex


def _spent_out(response: httpx.Response, budget: int) -> None:
    assert response.status_code == 429, response.text
    assert 0 < int(response.headers["retry-after"]) <= 86400  # until midnight UTC
    # The token budget's policy; the hourly bucket's RateLimit-* fields come along on every answer.
    assert f"{budget};w=86400" in response.headers.get_list("ratelimit-policy")
    assert "0" in response.headers.get_list("ratelimit-remaining")
    message, code = _error(response)
    assert code in ("RESOURCE_EXHAUSTED", "rate_limit_error") and "LLM tokens for today" in message


async def test_the_daily_token_budget_is_spent_with_the_services_usage(
    served: tuple[GatewayUnderTest, httpx.AsyncClient],
) -> None:
    gateway, http = served
    prompt = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0.0}
    # Greedy decoding: every call of this prompt uses the same tokens, learnt here with the admin key.
    first = await http.post("/api/v1/reasoning/generate", json=prompt, headers=gateway.auth())
    assert first.status_code == 200, first.text
    usage = first.json()["usage"]
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    # A budget of one call and a token: the second call starts (1 token left), the third does not, so
    # each call was charged its prompt and its completion.
    budget = used + 1
    key = await gateway.new_key(["write"], "llm", tokens_per_day=budget)
    for _ in range(2):
        allowed = await http.post("/api/v1/reasoning/generate", json=prompt, headers=gateway.auth(key))
        assert allowed.status_code == 200, allowed.text
    _spent_out(await http.post("/api/v1/reasoning/generate", json=prompt, headers=gateway.auth(key)), budget)
    _spent_out(await http.post("/v1/chat/completions", json=CHAT, headers=gateway.auth(key)), budget)
    _spent_out(await http.post("/v1/embeddings", json={"input": "x"}, headers=gateway.auth(key)), budget)


async def test_a_stream_is_charged_when_it_ends(served: tuple[GatewayUnderTest, httpx.AsyncClient]) -> None:
    gateway, http = served
    key = await gateway.new_key(["write"], "llm-stream", tokens_per_day=1)
    streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=gateway.auth(key))
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    _spent_out(await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=gateway.auth(key)), 1)


async def test_embeddings_spend_the_budget_too(served: tuple[GatewayUnderTest, httpx.AsyncClient]) -> None:
    gateway, http = served
    for path, body in (("/v1/embeddings", {"input": ["phishing kit"]}), ("/api/v1/embeddings/embed", {"texts": ["kit"]})):
        key = await gateway.new_key(["write"], "embedders", tokens_per_day=1)
        first = await http.post(path, json=body, headers=gateway.auth(key))
        assert first.status_code == 200, first.text
        _spent_out(await http.post(path, json=body, headers=gateway.auth(key)), 1)


async def test_the_openai_client_takes_a_bev_key(served: tuple[GatewayUnderTest, httpx.AsyncClient]) -> None:
    gateway, _ = served

    def client(key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0,
                                  http_client=httpx2.AsyncClient(trust_env=False, timeout=120))

    key = await gateway.new_key(["read", "write"], "openai-users")
    async with client(key) as ok:
        models = [m.id async for m in ok.models.list()]
        assert models[0] == "fast" and len(models) == 2  # the tier, then the model serving it
        answer = await ok.chat.completions.create(model="fast", max_tokens=4, temperature=0,
                                                  messages=[{"role": "user", "content": "Say hi."}])
        assert answer.choices[0].message.content and answer.usage is not None and answer.usage.total_tokens > 0
        vectors = await ok.embeddings.create(model="all-MiniLM-L6-v2", input=["phishing kit"])
        assert len(vectors.data[0].embedding) == 384
    async with client("bev_nobody_0000") as unknown:
        with pytest.raises(openai.AuthenticationError, match="not valid"):
            await unknown.models.list()
    async with client(await gateway.new_key(["read"], "openai-users")) as reader:
        with pytest.raises(openai.PermissionDeniedError, match="'write' scope"):
            await reader.chat.completions.create(model="fast", max_tokens=4,
                                                 messages=[{"role": "user", "content": "Say hi."}])
    async with client(await gateway.new_key(["write"], "openai-users", tokens_per_day=1)) as thrifty:
        await thrifty.embeddings.create(model="all-MiniLM-L6-v2", input="kit")
        with pytest.raises(openai.RateLimitError, match="LLM tokens for today"):
            await thrifty.embeddings.create(model="all-MiniLM-L6-v2", input="kit")


# --- teams and TLP: the corpus -------------------------------------------------------------------

async def _upload(http: httpx.AsyncClient, gateway: GatewayUnderTest, key: str, text: bytes, tlp: str) -> httpx.Response:
    return await http.post("/api/v1/documents", headers=gateway.auth(key), data={"tlp": tlp, "source": "access-test"},
                           files={"file": ("notes.txt", text, "text/plain")})


async def _completed(http: httpx.AsyncClient, gateway: GatewayUnderTest, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = (await http.get(f"/api/v1/documents/jobs/{job_id}", headers=gateway.auth(key))).json()
        if job["status"] in ("completed", "failed"):
            assert job["status"] == "completed", job
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.2)


async def test_another_teams_documents_and_jobs_are_not_found(served: tuple[GatewayUnderTest, httpx.AsyncClient]) -> None:
    gateway, http = served
    owner = await gateway.new_key(["read", "write"], "corpus-a")
    stranger = await gateway.new_key(["read", "write"], "corpus-b")
    cleared_low = await gateway.new_key(["read", "write"], "corpus-a", max_tlp=Tlp.CLEAR)
    uploaded = await _upload(http, gateway, owner, b"Quillwort Spider phished the ministry of lighthouses.", "green")
    assert uploaded.status_code == 202, uploaded.text
    job_id = uploaded.json()["job_id"]
    assert (await http.get(f"/api/v1/documents/jobs/{job_id}", headers=gateway.auth(stranger))).status_code == 404
    document_id = (await _completed(http, gateway, owner, job_id))["document_id"]

    search = {"q": "Quillwort Spider lighthouses", "mode": "text"}
    found = await http.get("/api/v1/search", params=search, headers=gateway.auth(owner))
    assert document_id in {hit["document_id"] for hit in found.json()["hits"]}, found.text
    for key in (stranger, cleared_low):  # another team's; or its own team's above the key's TLP
        assert (await http.get(f"/api/v1/documents/{document_id}", headers=gateway.auth(key))).status_code == 404
        hidden = await http.get("/api/v1/search", params=search, headers=gateway.auth(key))
        assert hidden.status_code == 200 and document_id not in {hit["document_id"] for hit in hidden.json()["hits"]}
    assert (await http.delete(f"/api/v1/documents/{document_id}", headers=gateway.auth(stranger))).status_code == 404
    assert (await http.get(f"/api/v1/documents/{document_id}", headers=gateway.auth())).status_code == 200  # admin

    above = await _upload(http, gateway, cleared_low, b"A TLP:GREEN note from a TLP:CLEAR key.", "green")
    assert above.status_code == 403 and "TLP" in above.json()["error"], above.text  # it could not read it back
    assert (await http.delete(f"/api/v1/documents/{document_id}", headers=gateway.auth(owner))).status_code == 200
