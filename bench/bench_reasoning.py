"""Inference through the fleet against llama.cpp called directly, in one run; and the router's own cost.

Starts its own nats-server and one llama.cpp server (SmolLM2-135M, llama-cpp-python's OpenAI
server), then two processes, as in the fleet: the reasoning servicer (router -> that llama.cpp
server) and the gateway (FastAPI, /v1/chat/completions), talking over NATS. The client streams the
same chat request, same prompt and max_tokens, alternately
- "direct":  straight to llama.cpp's /v1/chat/completions (stream=true);
- "fleet":   to the gateway's /v1/chat/completions (stream=true): gateway -> NATS -> reasoning ->
             router -> llama.cpp and back, SSE re-framed twice;
and measures time to first token (request sent -> first content delta) and decode tokens/s
((tokens - 1) / (last delta - first delta)). Requests alternate so drift on a shared machine hits
both sides alike. The router's own cost per request (choosing among a 6-backend table with
affinity, taking and releasing a queue slot) is timed in-process without I/O.

    .venv/bin/python bench/bench_reasoning.py          # ~60-90 s on 2 shared cores
    .venv/bin/python bench/bench_reasoning.py --quick  # ~20 s

Targets (issue C1): fleet tokens/s >= 0.9 x direct; time-to-first-token overhead <= 25 ms at p50.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bev.access import new_key
from bev.engines import NatsServer, Postgres, Redis, free_port
from bev.engines.llama_server import LlamaServer

PROMPT = "Write a short paragraph about how analysts track phishing infrastructure."
TARGETS = {"tokens_per_s_ratio": (">=", 0.9), "ttft_overhead_p50_ms": ("<=", 25.0)}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- the two fleet processes ---------------------------------------------------------------------

def _reasoning_process(nats_url: str, llama_url: str, model: str) -> None:
    from bev.rpc import InstanceInfo
    from bev.rpc.nats_transport import NatsRpcServer
    from services.reasoning.backends import Backend
    from services.reasoning.router import Router
    from services.reasoning.servicer import Reasoning, http_client
    from services.reasoning.settings import BackendConfig, ReasoningConfig

    async def main() -> None:
        import nats

        http = http_client()
        backend = Backend(BackendConfig(name="llama.cpp", tier="fast", url=llama_url, model=model, kind="llamacpp",
                                        max_in_flight=1), http)
        router = Router([backend], "fast")
        await router.probe_all()
        servicer = Reasoning(InstanceInfo(service="reasoning"), ReasoningConfig(embedded={"enabled": False}),
                             router, http)
        nc = await nats.connect(nats_url)
        server = NatsRpcServer(nc, servicer, max_request_bytes=4 << 20, default_timeout_s=60, max_concurrency=64,
                               instance=servicer.info.instance)
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _gateway_process(nats_url: str, port: int, dsn: str, redis_url: str, api_key: str) -> None:
    import nats
    import uvicorn

    from bev.manifest import load_manifest
    from bev.vocab import Tlp
    from services.gateway.api import create_app
    from services.gateway.servicer import open_guard
    from services.gateway.settings import GatewayConfig

    async def main() -> None:
        nc = await nats.connect(nats_url)
        async with open_guard(dsn, redis_url, "bench-pepper-long-enough", nc) as guard:
            await guard.keys.ensure(api_key, "bench", ["admin"], "bench", Tlp.RED)  # as the fleet's bootstrap key
            app = create_app(nc, GatewayConfig(), load_manifest().callees("gateway"), guard)
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                   log_level="warning", lifespan="off"))
            await server.serve()

    asyncio.run(main())


# -- measuring -------------------------------------------------------------------------------------

async def stream_once(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(time to first token s, decode tokens/s, tokens) of one streamed chat completion. Tokens are
    the reported usage when there is one (the gateway merges pieces that pile up), else the pieces."""
    started = time.perf_counter()
    first = last = 0.0
    tokens = pieces = 0
    async with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    pieces += 1
    tokens = tokens or pieces
    if tokens < 2:
        raise RuntimeError(f"{url} streamed {tokens} tokens; raise --max-tokens")
    return first - started, (tokens - 1) / (last - first), tokens


async def wait_http(url: str, timeout_s: float = 60, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(trust_env=False, headers=headers) as http:
        while True:
            try:
                if (await http.get(url, timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s:g}s")
            await asyncio.sleep(0.2)


async def router_cost(iterations: int) -> dict[str, float]:
    """Microseconds per request spent in the router itself: candidates (tier, health, load, affinity)
    plus taking and releasing a slot, over a 6-backend table in three tiers."""
    from bev.vocab import Tier
    from services.reasoning.backends import Backend
    from services.reasoning.router import Router
    from services.reasoning.settings import BackendConfig

    async with httpx.AsyncClient(trust_env=False) as http:
        backends = [Backend(BackendConfig(name=f"b{i}", tier=Tier.ordered()[i % 3],
                                          url=f"http://127.0.0.1:{9000 + i}/v1", model="m"), http) for i in range(6)]
        for backend in backends:
            backend.mark_up()
        router = Router(backends, Tier.BALANCED)
        for session in range(1000):
            router._remember(f"inv-{session}", backends[session % 6])
        samples = []
        for block in range(5):
            started = time.perf_counter()
            for i in range(iterations // 5):
                plan = router.candidates(Tier.POWERFUL, session_id=f"inv-{(i + block) % 1000}")
                async with plan[0][0].slot():
                    pass
            samples.append((time.perf_counter() - started) / (iterations // 5) * 1e6)
    return {"router_us_per_request_p50": statistics.median(samples), "router_us_per_request_min": min(samples)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(args: argparse.Namespace, llama: LlamaServer, gateway_url: str, api_key: str) -> dict[str, Any]:
    body = {"model": "fast", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    direct_body = {**body, "model": llama.model_alias}  # llama.cpp ignores include_usage
    targets = {"direct": (f"{llama.base_url}/chat/completions", direct_body),
               "fleet": (f"{gateway_url}/v1/chat/completions", body)}
    results: dict[str, dict[str, list[float]]] = {name: {"ttft": [], "rate": []} for name in targets}
    # The gateway's key goes to llama.cpp too (it ignores it): both paths send the same headers.
    async with httpx.AsyncClient(trust_env=False, timeout=120, headers={"Authorization": f"Bearer {api_key}"}) as http:
        for url, request in targets.values():  # warm-up: connections, prefix cache, JIT paths
            await stream_once(http, url, request)
        for round_ in range(args.rounds):
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for name in order:
                url, request = targets[name]
                ttft, rate, _ = await stream_once(http, url, request)
                results[name]["ttft"].append(ttft * 1000)
                results[name]["rate"].append(rate)
    figures: dict[str, Any] = {}
    for name, values in results.items():
        figures[f"{name}_ttft_p50_ms"] = statistics.median(values["ttft"])
        figures[f"{name}_ttft_p90_ms"] = percentile(values["ttft"], 0.9)
        figures[f"{name}_tokens_per_s_p50"] = statistics.median(values["rate"])
    figures["tokens_per_s_ratio"] = figures["fleet_tokens_per_s_p50"] / figures["direct_tokens_per_s_p50"]
    # paired by round, so a slow moment of the machine cancels out
    overheads = [f - d for f, d in zip(results["fleet"]["ttft"], results["direct"]["ttft"], strict=True)]
    figures["ttft_overhead_p50_ms"] = statistics.median(overheads)
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12, help="requests per side, alternating")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (leave a core to the fleet)")
    parser.add_argument("--router-iterations", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="a ~20 s run: 4 rounds of 32 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.max_tokens, args.router_iterations = 4, 32, 10_000
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-reasoning-") as tmp, \
            NatsServer(Path(tmp) / "nats") as nats_server, \
            Postgres(Path(tmp) / "pg", fsync=False) as postgres, Redis(Path(tmp) / "redis") as redis, \
            LlamaServer(Path(tmp) / "llama", n_threads=args.threads) as llama:
        port = free_port()
        api_key = new_key("bench")[2]
        processes = [
            ctx.Process(target=_reasoning_process, args=(nats_server.url, llama.base_url, llama.model_alias),
                        daemon=True),
            ctx.Process(target=_gateway_process, args=(nats_server.url, port, postgres.dsn, redis.url, api_key),
                        daemon=True),
        ]
        for process in processes:
            process.start()
        gateway_url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_http(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}))
            log(f"fleet up in {time.perf_counter() - started:.1f}s; {args.rounds} rounds of {args.max_tokens} tokens")
            figures = asyncio.run(measure(args, llama, gateway_url, api_key))
        finally:
            for process in processes:
                process.terminate()
                process.join(10)
    figures.update(asyncio.run(router_cost(args.router_iterations)))

    log("")
    log(f"{'path':<8} {'ttft p50 ms':>12} {'ttft p90 ms':>12} {'decode tok/s p50':>17}")
    for name in ("direct", "fleet"):
        log(f"{name:<8} {figures[f'{name}_ttft_p50_ms']:>12.1f} {figures[f'{name}_ttft_p90_ms']:>12.1f} "
            f"{figures[f'{name}_tokens_per_s_p50']:>17.1f}")
    checks = {}
    for key, (op, bound) in TARGETS.items():
        value = figures[key]
        checks[key] = value >= bound if op == ">=" else value <= bound
        log(f"{key:<24} {value:>9.3f}  target {op} {bound:g}  {'ok' if checks[key] else 'MISSED'}")
    log(f"router cost per request: {figures['router_us_per_request_p50']:.1f} us (p50 of 5 blocks)")
    output = {
        "bench": "reasoning",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0))},
        "params": {"rounds": args.rounds, "max_tokens": args.max_tokens, "threads": args.threads,
                   "model": llama.model_alias, "quick": args.quick},
        "figures": {key: round(value, 4) for key, value in figures.items()},
        "targets_met": checks,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(output))


if __name__ == "__main__":
    main()
