"""The web UI's static files at / (services/gateway/web_ui.py), over real HTTP behind the real guard:
open without a key (they hold no data), under a Content-Security-Policy that allows nothing from
outside the gateway, hashed assets cached for good, and the API behind them still closed.

The UI itself, built by `make setup`, is driven in a real browser by tests/ui/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.engines import NatsServer, Redis
from services.gateway.settings import GatewayConfig
from services.gateway.testing import gateway_on_free_port
from services.gateway.web_ui import DEFAULT_DIR

pytestmark = pytest.mark.asyncio(loop_scope="session")

INDEX = '<!doctype html><html lang="en"><head><script type="module" src="/assets/index-abc123.js"></script></head></html>'


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("ui-nats")) as server:
        yield server


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build as Vite lays it out: index.html, favicon.svg, assets/<name>-<hash>.js."""
    root = tmp_path_factory.mktemp("ui-build")
    (root / "assets").mkdir()
    (root / "index.html").write_text(INDEX)
    (root / "favicon.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (root / "assets" / "index-abc123.js").write_text("export default 1;\n")
    return root


async def _served(bus: NatsServer, dsn: str, redis_url: str, web_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    nc = NatsClient()
    await nc.connect(bus.url)
    try:
        async with gateway_on_free_port(nc, dsn, redis_url, GatewayConfig(web_dir=web_dir)) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=30, trust_env=False) as http:
            yield http
    finally:
        await nc.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(bus: NatsServer, fresh_database: Callable[[], str], redis_server: Redis,
               build: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _served(bus, fresh_database(), redis_server.url, build):
        yield client


async def test_the_page_and_its_assets_need_no_key(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and page.text == INDEX
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"  # a new build's page is seen at once
    asset = await http.get("/assets/index-abc123.js")
    assert asset.status_code == 200 and asset.text == "export default 1;\n"
    assert "immutable" in asset.headers["cache-control"]
    icon = await http.get("/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


async def test_every_ui_answer_forbids_loading_anything_from_elsewhere(http: httpx.AsyncClient) -> None:
    for path in ("/", "/assets/index-abc123.js", "/favicon.svg"):
        headers = (await http.get(path)).headers
        policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'", path
        assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'", path
        assert headers["x-content-type-options"] == "nosniff", path


async def test_the_api_and_unknown_paths_stay_closed(http: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/api/v1/investigations"), ("GET", "/index.html"), ("POST", "/"),
                         ("GET", "/openapi.json"), ("GET", "/assetsx")):
        response = await http.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
    missing = await http.get("/assets/nothing.js")  # open prefix, no such file: 404, nothing else
    assert missing.status_code == 404
    escape = await http.get("/assets/..%2F..%2Findex.html")
    assert escape.status_code == 404


async def test_without_a_build_the_page_says_how_to_make_one(bus: NatsServer, fresh_database: Callable[[], str],
                                                             redis_server: Redis, tmp_path: Path) -> None:
    async for client in _served(bus, fresh_database(), redis_server.url, tmp_path / "never-built"):
        page = await client.get("/")
        assert page.status_code == 503 and "make setup" in page.text
        assert (await client.get("/assets/index.js")).status_code == 404
        assert (await client.get("/api/v1/services")).status_code == 401


async def test_the_default_build_is_the_one_make_setup_makes() -> None:
    assert DEFAULT_DIR == Path(__file__).parents[1] / "web" / "dist"
