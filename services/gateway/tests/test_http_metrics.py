"""HTTP RED metrics: each answer counted once under its route template (never the raw path), its
status and its method; the guard's refusals and unknown paths too; streams (SSE, WebSockets)
counted when they end, their duration to their end; in-flight back to 0; the gateway's /metrics
passes promtool. The gateway over real HTTP (avatar behind it, keys in PostgreSQL, limits in Redis),
and the middleware in front of a small Starlette app served by uvicorn for what the gateway's routes
cannot stage (a stream held open, an exception)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import nats
import pytest
import pytest_asyncio
import uvicorn
import websockets
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bev.engines import NatsServer, Redis, free_port
from bev.rpc import InstanceInfo
from bev.telemetry import start_metrics_server
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import assemble
from services.avatar.settings import AvatarConfig
from services.gateway.http_metrics import HttpMetrics
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

SPEAK = "/api/v1/avatar/speak"
KEY_ROUTE = "/api/v1/keys/{key_id}"


def requests(route: str, method: str, code: int) -> float:
    labels = {"route": route, "method": method, "code": str(code)}
    return REGISTRY.get_sample_value("bev_http_requests_total", labels) or 0.0


def request_count(endpoint: str, method: str, status: int) -> float:
    labels = {"endpoint": endpoint, "method": method, "status": str(status)}
    return REGISTRY.get_sample_value("bev_request_count_total", labels) or 0.0


def observed(route: str, method: str) -> tuple[float, float]:
    """(count, sum) of the route's duration histogram."""
    labels = {"route": route, "method": method}
    return (REGISTRY.get_sample_value("bev_http_request_duration_seconds_count", labels) or 0.0,
            REGISTRY.get_sample_value("bev_http_request_duration_seconds_sum", labels) or 0.0)


def in_flight() -> float:
    return REGISTRY.get_sample_value("bev_http_requests_in_flight") or 0.0


class Counts:
    """Counter deltas since it was made: `counts.delta(route, method, code)`."""

    def __init__(self, *keys: tuple[str, str, int]) -> None:
        self.before = {key: requests(*key) for key in keys}

    def delta(self, route: str, method: str, code: int) -> float:
        return requests(route, method, code) - self.before[(route, method, code)]


# --- the gateway ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("metrics-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(own_nats: NatsServer, fresh_database: Callable[[], str],
                  redis_server: Redis) -> AsyncIterator[GatewayUnderTest]:
    """The gateway with only the avatar behind it (its speech route answers; the swarm is not served)."""
    avatar_nc = await nats.connect(own_nats.url)
    avatar = await assemble(InstanceInfo(service="avatar"), AvatarConfig(), avatar_nc)
    try:
        async with serving_on_nats(avatar, own_nats.url) as nc, \
                gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway:
            yield gateway
    finally:
        await avatar_nc.close()


async def test_answers_are_counted_under_their_route_template(gateway: GatewayUnderTest) -> None:
    unknown_key = f"k{uuid.uuid4().hex[:12]}"
    expected = {(SPEAK, "POST", 200): 1, (KEY_ROUTE, "GET", 404): 1,
                (KEY_ROUTE, "GET", 401): 1,  # refused by the guard before routing: matched to name it
                ("unmatched", "GET", 404): 1, (SPEAK, "DELETE", 405): 1,
                ("/healthz", "OTHER", 405): 1}  # a method outside HTTP's usual set
    counts = Counts(*expected)
    speak_before = request_count(SPEAK, "POST", 200)
    durations_before = observed(SPEAK, "POST")
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
        assert (await http.post(SPEAK, json={"text": "ok"})).status_code == 200
        assert (await http.get(f"/api/v1/keys/{unknown_key}")).status_code == 404
        assert (await http.get(f"/api/v1/keys/{unknown_key}", headers={"Authorization": ""})).status_code == 401
        assert (await http.get(f"/no/such/{unknown_key}")).status_code == 404
        assert (await http.delete(SPEAK)).status_code == 405
        # A method outside the usual set that the server's parser knows (llhttp answers 400 to one it
        # does not, `BREW`, before the app or this middleware sees it: services/gateway/http_server.py).
        assert (await http.request("PROPFIND", "/healthz")).status_code == 405
    await _until(lambda: {key: counts.delta(*key) for key in expected} == expected,
                 lambda: {key: counts.delta(*key) for key in expected})
    assert request_count(SPEAK, "POST", 200) == speak_before + 1  # the BEV design's name, the same count
    count, seconds = observed(SPEAK, "POST")
    assert count == durations_before[0] + 1 and seconds > durations_before[1]
    assert in_flight() == 0
    assert unknown_key not in (await _scrape()).decode()  # no raw path ever becomes a label


async def test_a_refused_websocket_is_counted_with_its_status(gateway: GatewayUnderTest) -> None:
    route = "/api/v1/avatar/{investigation_id}/ws"
    counts = Counts((route, "WEBSOCKET", 503))
    url = gateway.url.replace("http://", "ws://") + f"/api/v1/avatar/inv-{uuid.uuid4().hex[:8]}/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:  # the swarm, which checks access, is not served
        async with websockets.connect(url, additional_headers=gateway.auth()):
            pass
    assert refused.value.response.status_code == 503
    await _until(lambda: counts.delta(route, "WEBSOCKET", 503) == 1)
    assert in_flight() == 0


async def test_an_sse_answer_is_counted_once_when_it_ends(gateway: GatewayUnderTest) -> None:
    counts = Counts(("/mcp", "POST", 200))
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "metrics", "version": "0"}}}
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
        answer = await http.post("/mcp", json=initialize, headers={"accept": "application/json, text/event-stream"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    await _until(lambda: counts.delta("/mcp", "POST", 200) == 1)
    assert in_flight() == 0


async def test_the_gateways_metrics_pass_promtool(gateway: GatewayUnderTest) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
        await http.post(SPEAK, json={"text": "ok"})
    text = await _scrape()
    for family in ("bev_http_requests_total", "bev_http_request_duration_seconds_bucket",
                   "bev_http_requests_in_flight", "bev_request_count_total"):
        assert f"\n{family}" in text.decode(), family
    checked = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=text,
                                      capture_output=True, timeout=30, check=False)
    problems = (checked.stdout + checked.stderr).decode().strip()
    assert checked.returncode == 0 and not problems, problems


_metrics_port: list[int] = []


async def _scrape() -> bytes:
    """The process's /metrics as the gateway service serves it (bev.runtime's metrics server)."""
    if not _metrics_port:
        _metrics_port.append(start_metrics_server("127.0.0.1", 0))
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        return (await http.get(f"http://127.0.0.1:{_metrics_port[0]}/metrics")).content


# --- the middleware on its own: a stream held open, an exception ----------------------------------

class Staged:
    """A small app behind HttpMetrics: a stream that waits for `release`, a route that raises, a WebSocket."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.streaming = asyncio.Event()

        async def item(request: Request) -> Response:
            return JSONResponse({"id": request.path_params["item_id"]})

        async def stream(request: Request) -> Response:
            async def body() -> AsyncIterator[bytes]:
                yield b"data: first\n\n"
                self.streaming.set()
                await self.release.wait()
                yield b"data: last\n\n"
            return StreamingResponse(body(), media_type="text/event-stream")

        async def boom(request: Request) -> Response:
            raise RuntimeError("a bug")

        async def echo(websocket: WebSocket) -> None:
            await websocket.accept()
            await websocket.send_text(await websocket.receive_text())
            await websocket.close()

        self.app = Starlette(routes=[
            Route("/staged/items/{item_id}", item), Route("/staged/stream", stream), Route("/staged/boom", boom),
            WebSocketRoute("/staged/ws/{room}", echo)])
        self.app.add_middleware(HttpMetrics, routes=self.app.router.routes)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def staged() -> AsyncIterator[tuple[Staged, str]]:
    app = Staged()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app.app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_stream_is_in_flight_until_its_last_byte(staged: tuple[Staged, str]) -> None:
    app, address = staged
    route = "/staged/stream"
    counts = Counts((route, "GET", 200))
    durations_before = observed(route, "GET")
    idle = in_flight()
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10, trust_env=False) as http, \
            http.stream("GET", route) as response:
        assert response.status_code == 200
        await asyncio.wait_for(app.streaming.wait(), 5)
        assert in_flight() == idle + 1 and counts.delta(route, "GET", 200) == 0  # not counted while it runs
        await asyncio.sleep(0.3)
        app.release.set()
        body = await response.aread()
    assert body.endswith(b"data: last\n\n")
    await _until(lambda: counts.delta(route, "GET", 200) == 1)
    count, seconds = observed(route, "GET")
    assert count == durations_before[0] + 1 and seconds - durations_before[1] >= 0.3  # to the stream's end
    assert in_flight() == idle


async def test_an_exception_is_a_500_under_its_route(staged: tuple[Staged, str]) -> None:
    _, address = staged
    counts = Counts(("/staged/boom", "GET", 500), ("/staged/items/{item_id}", "GET", 200))
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10, trust_env=False) as http:
        assert (await http.get("/staged/boom")).status_code == 500
        for item in ("a", "b", "c"):
            assert (await http.get(f"/staged/items/{item}")).status_code == 200
    await _until(lambda: counts.delta("/staged/boom", "GET", 500) == 1)
    await _until(lambda: counts.delta("/staged/items/{item_id}", "GET", 200) == 3)  # three paths, one series
    assert in_flight() == 0


async def test_an_accepted_websocket_is_counted_when_it_closes(staged: tuple[Staged, str]) -> None:
    _, address = staged
    route = "/staged/ws/{room}"
    counts = Counts((route, "WEBSOCKET", 101))
    async with websockets.connect(f"ws://{address}/staged/ws/lobby") as websocket:
        await websocket.send("hello")
        assert await websocket.recv() == "hello"
    await _until(lambda: counts.delta(route, "WEBSOCKET", 101) == 1)
    assert in_flight() == 0


async def _until(condition: Callable[[], bool], seen: Callable[[], object] = lambda: None,
                 timeout_s: float = 5) -> None:
    """The server records an answer after its last byte went out: the client may see it first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not recorded in time; seen: {seen()}"
        await asyncio.sleep(0.01)
