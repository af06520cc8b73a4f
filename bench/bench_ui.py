"""The web UI's live view: how long an investigation event takes from the swarm publishing it to
the analyst's browser showing it, and the first load of the investigation page, in one run.

Starts nats-server, PostgreSQL and Redis in a temp dir, the real swarm and avatar services on the
bus (the page's avatar panel follows the same events), the real gateway in front of them (serving the built UI, services/gateway/web/dist: `make setup` builds it),
and Debian's chromium through Playwright. An investigation is written as the swarm writes one;
the bench then emits events through the swarm's own emit path (the event row, then JetStream), one
at a time:
- "dom": from the emit call to the timeline <li> of that event appearing in the page (a
  MutationObserver in the page stamps it; both clocks are this machine's wall clock);
- "sse" (the baseline, same events, same moment): to a plain HTTP client reading the same
  Server-Sent Events route: what the gateway and the swarm cost, without the browser and the UI.
First load: a new browser context opening #/investigations/<id> of an investigation with 200
events until all 200 are in the timeline, against a plain client fetching the investigation and
reading the same 200 events over HTTP.
The last stdout line is one JSON object.

    .venv/bin/python bench/bench_ui.py           # ~60 s on 2 shared cores
    .venv/bin/python bench/bench_ui.py --quick   # ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import nats
from playwright.async_api import Page, async_playwright

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer, Postgres, Redis
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.testing.browser import key_script, launch_options
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import assemble as assemble_avatar
from services.avatar.settings import AvatarConfig
from services.gateway.testing import gateway_on_free_port
from services.gateway.web_ui import DEFAULT_DIR
from services.swarm.scope import Scope
from services.swarm.servicer import Swarm, SwarmDeps
from services.swarm.settings import SwarmConfig
from services.swarm.targets import infer_target

# Stamps each timeline entry as it is added: event id -> wall-clock ms.
OBSERVER = """() => {
  window.__seen = {};
  new MutationObserver((records) => {
    const now = performance.timeOrigin + performance.now();
    for (const record of records) for (const node of record.addedNodes) {
      if (node.nodeType !== 1) continue;
      const items = node.matches('[data-testid=event]') ? [node] : node.querySelectorAll('[data-testid=event]');
      for (const item of items) window.__seen[item.dataset.eventId] ??= now;
    }
  }).observe(document.body, {childList: true, subtree: true});
}"""

# Events as the swarm writes them (services/swarm/events.schema.json), in a realistic mix.
SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("tool_call", {"agent": "infrastructure-1", "role": "infrastructure", "tool": "collectors.Collect",
                   "args": {"collector": "dns", "target": "example.org"}, "key": "k"}),
    ("evidence", {"evidence": "ev-1", "kind": "observation", "uri": "dns:example.org", "collector": "dns"}),
    ("entity", {"type": "domain-name", "value": "example.org", "evidence": "ev-1"}),
    ("hypothesis", {"agent": "analyst-1", "id": "h1", "statement": "example.org is run by the same operator",
                    "confidence": 0.7, "supporting": ["ev-1"]}),
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def new_investigation(swarm: Swarm, target: str) -> str:
    assert swarm.store is not None
    investigation_id = str(uuid.uuid4())
    typed = infer_target(target, "")
    await swarm.store.create(id=investigation_id, target=typed.value, target_type=typed.kind,
                             stix_type=typed.stix_type, mode="hybrid",
                             budget={"max_tool_calls": 200, "max_tokens": 200000, "max_wall_s": 900.0, "max_depth": 2},
                             scope={**Scope.build(typed, []).to_dict(), "opsec": False}, seeds=[], tlp="clear")
    return investigation_id


async def read_sse(http: httpx.AsyncClient, investigation_id: str, seen: dict[str, float], until: int,
                   arrived: asyncio.Event | None = None) -> None:
    """Reads the events route as a plain client, stamping each event id on arrival."""
    async with http.stream("GET", f"/api/v1/investigations/{investigation_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("id:"):
                seen[line[3:].strip()] = time.time() * 1000
                if arrived is not None:
                    arrived.set()
                if len(seen) >= until:
                    return


async def open_page(context: Any, investigation_id: str, events: int) -> tuple[Page, float]:
    page = await context.new_page()
    page.on("console", lambda message: print(f"page console: {message.text}", file=sys.stderr)
            if message.type == "error" else None)
    started = time.perf_counter()
    await page.goto(f"/#/investigations/{investigation_id}")
    # Functions, not expression strings: the page's CSP forbids eval, which a string would need.
    await page.wait_for_function("(n) => document.querySelectorAll('[data-testid=event]').length >= n",
                                 arg=events, timeout=60_000, polling="raf")
    return page, (time.perf_counter() - started) * 1000


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if not (DEFAULT_DIR / "index.html").is_file():
        raise SystemExit(f"the web UI is not built ({DEFAULT_DIR}): run `make setup`")
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp, NatsServer(Path(tmp) / "nats") as bus_server, \
            Postgres(Path(tmp) / "pg", fsync=False) as postgres, Redis(Path(tmp) / "redis") as redis:
        clients_nc = await nats.connect(bus_server.url)
        await clients_nc.jetstream().add_stream(name="BEV_EVENTS", subjects=["bev.events.>"])
        swarm = Swarm(InstanceInfo(service="swarm"), SwarmConfig(queue_poll_s=3600), SwarmDeps(
            postgres.dsn, CollectorsClient.over_nats(clients_nc), EmbeddingsClient.over_nats(clients_nc),
            ReasoningClient.over_nats(clients_nc), Path(tmp) / "swarm", clients_nc))
        avatar_nc = await nats.connect(bus_server.url)  # the avatar's own, as its process has
        avatar = await assemble_avatar(InstanceInfo(service="avatar"), AvatarConfig(), avatar_nc)
        try:
            async with serving_on_nats(swarm, bus_server.url) as bus, serving_on_nats(avatar, bus_server.url), \
                    gateway_on_free_port(bus, postgres.dsn, redis.url) as gateway, \
                    httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=60) as http, \
                    async_playwright() as playwright:
                browser = await playwright.chromium.launch(**launch_options())
                context = await browser.new_context(base_url=gateway.url)
                await context.add_init_script(key_script(gateway.admin_key))
                return await measure(args, swarm, http, context)
        finally:
            await avatar_nc.close()
            await clients_nc.close()


async def measure(args: argparse.Namespace, swarm: Swarm, http: httpx.AsyncClient, context: Any) -> dict[str, Any]:
    assert swarm.engine is not None and swarm.store is not None
    deps = swarm.engine.deps

    # First load: an investigation with 200 events, opened in a fresh page each round.
    loaded = await new_investigation(swarm, "first-load.example.org")
    for n in range(200):
        kind, data = SAMPLES[n % len(SAMPLES)]
        await swarm.store.add_event(loaded, kind, data)
    page_ms: list[float] = []
    http_ms: list[float] = []
    for _ in range(args.loads):
        started = time.perf_counter()
        await http.get(f"/api/v1/investigations/{loaded}")
        await read_sse(http, loaded, {}, 200)
        http_ms.append((time.perf_counter() - started) * 1000)
        page, ms = await open_page(context, loaded, 200)
        page_ms.append(ms)
        await page.close()

    # Live: one event at a time, to the page and to a plain SSE client at once.
    live = await new_investigation(swarm, "live.example.org")
    await swarm.store.add_event(live, "phase", {"phase": "ingestion", "progress": 0.0})
    page, _ = await open_page(context, live, 1)
    await page.evaluate(OBSERVER)
    sse_seen: dict[str, float] = {}
    arrived = asyncio.Event()
    reader = asyncio.create_task(read_sse(http, live, sse_seen, args.events + 1, arrived))
    await asyncio.sleep(1.0)  # both streams open and idle
    emitted: dict[str, float] = {}
    last = (await swarm.store.events(live))[-1].id
    for n in range(args.events):
        kind, data = SAMPLES[n % len(SAMPLES)]
        at = time.time() * 1000
        await deps.emit(live, kind, data)
        event_id = str((await swarm.store.events(live, last))[0].id)
        last = int(event_id)
        emitted[event_id] = at
        await page.wait_for_function("(id) => window.__seen[id] !== undefined", arg=event_id, timeout=10_000,
                                     polling=5)
        while event_id not in sse_seen:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 10)
        await asyncio.sleep(args.gap_s)
    reader.cancel()
    dom_seen: dict[str, float] = await page.evaluate("window.__seen")
    dom = [dom_seen[i] - at for i, at in emitted.items()]
    sse = [sse_seen[i] - at for i, at in emitted.items()]
    return {
        "events": len(emitted),
        "dom_p50_ms": pct(dom, 0.5), "dom_p99_ms": pct(dom, 0.99), "dom_max_ms": round(max(dom), 2),
        "sse_p50_ms": pct(sse, 0.5), "sse_p99_ms": pct(sse, 0.99),
        "dom_over_sse_p50": round(statistics.median(dom) / statistics.median(sse), 2),
        "target_p99_under_200_ms": pct(dom, 0.99) < 200,
        "first_load_events": 200, "first_load_page_ms_p50": round(statistics.median(page_ms), 1),
        "first_load_http_ms_p50": round(statistics.median(http_ms), 1),
        "first_load_page_over_http": round(statistics.median(page_ms) / statistics.median(http_ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events and loads")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--gap-s", type=float, default=0.02, help="pause between events")
    args = parser.parse_args()
    if args.quick:
        args.events, args.loads = 100, 3
    result = asyncio.run(bench(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
