"""The price of the gateway's guard (API key, rate limit, audit) on a cheap route, in one run.

Starts nats-server, PostgreSQL and Redis in a temp dir, the avatar servicer in one process (a cheap
RPC: an in-memory state machine), and in another process two gateways over the same bus:
- "guarded": the gateway as it ships (services/gateway/api.py create_app): each request's key is
  verified (cached), its Redis bucket taken, and, the route being a POST, an audit row written to
  PostgreSQL and an event published on NATS after the answer;
- "open": the same app with the guard taken out of its middleware list and the caller set by
  this bench (what the routes need), so the route, its validation and its RPC are the same.
The client (this process) measures both in interleaved rounds, so drift on a shared machine hits
both alike: sequential latency (one request in flight, keep-alive) -> p50/p99, and throughput
with --concurrency clients -> requests/s. It also checks that every guarded call was audited.
The last stdout line is one JSON object.

    .venv/bin/python bench/bench_gateway.py           # ~60 s on 2 shared cores
    .venv/bin/python bench/bench_gateway.py --quick   # ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUTE = "/api/v1/avatar/state"


def _serve_avatar(nats_url: str, ready: Connection) -> None:
    from bev.rpc import InstanceInfo
    from bev.testing.serving import serving_on_nats
    from services.avatar.servicer import Avatar
    from services.avatar.settings import AvatarConfig

    async def main() -> None:
        avatar = Avatar(InstanceInfo("avatar", "bench-avatar", "bench"), AvatarConfig())
        async with serving_on_nats(avatar, nats_url, max_concurrency=256):
            ready.send("ready")
            await asyncio.get_running_loop().run_in_executor(None, ready.recv)  # until told to stop

    asyncio.run(main())


def _serve_gateways(nats_url: str, dsn: str, redis_url: str, ports: tuple[int, int], conn: Connection) -> None:
    import nats

    from bev.access import ApiKey
    from bev.manifest import load_manifest
    from bev.vocab import Tlp
    from services.gateway.api import create_app
    from services.gateway.deps import Caller
    from services.gateway.http_server import GatewayServer, server_config
    from services.gateway.servicer import open_guard
    from services.gateway.settings import GatewayConfig

    async def main() -> None:
        nc = await nats.connect(nats_url)
        callees = load_manifest().callees("gateway")
        async with open_guard(dsn, redis_url, "bench-pepper-long-enough", nc) as guard:
            key, whole = await guard.keys.create("bench", ["write", "read"], "bench", max_tlp=Tlp.RED,
                                                 requests_per_hour=10_000_000, tokens_per_day=10_000_000)
            guarded = create_app(nc, GatewayConfig(), callees, guard)
            bare = create_app(nc, GatewayConfig(), callees, guard)
            # The same app without the guard: drop it from the middleware list (before the stack is
            # built at the first request) and give each request the caller the guard would have.
            bare.user_middleware = [m for m in bare.user_middleware if m.cls.__name__ != "_GuardMiddleware"]
            caller = Caller(ApiKey(key.id, key.name, key.team, key.scopes, key.max_tlp, key.requests_per_hour,
                                   key.tokens_per_day, key.created_at))

            async def open_app(scope: Any, receive: Any, send: Any) -> None:
                scope.setdefault("state", {})["caller"] = caller
                await bare(scope, receive, send)

            servers = [GatewayServer(server_config(app, GatewayConfig(host="127.0.0.1", port=port)))
                       for app, port in ((guarded, ports[0]), (open_app, ports[1]))]
            tasks = [asyncio.create_task(server.serve()) for server in servers]
            while not all(server.started for server in servers):
                for task in tasks:
                    if task.done():
                        task.result()  # raises why it could not start
                await asyncio.sleep(0.05)
            conn.send(whole)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks)
            await guard.drain()
            async with guard.keys.pool.connection() as db:
                row = await (await db.execute("select count(*) from access.audit where key_id = %s", (key.id,))).fetchone()
            conn.send(int(row[0]) if row else 0)
        await nc.close()

    asyncio.run(main())


async def _latency(client: Any, url: str, n: int, counter: list[int]) -> list[float]:
    times = []
    for _ in range(n):
        counter[0] += 1
        body = {"session_id": f"s{counter[0] % 64}", "state": "collecting"}
        began = time.perf_counter()
        answer = await client.post(url + ROUTE, json=body)
        times.append(time.perf_counter() - began)
        if answer.status_code != 200:
            raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
    return times


async def _throughput(clients: list[Any], url: str, seconds: float, counter: list[int]) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(client: Any) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            counter[0] += 1
            answer = await client.post(url + ROUTE, json={"session_id": f"s{counter[0] % 64}", "state": "collecting"})
            if answer.status_code != 200:
                raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 6)
    per_round = 100 if args.quick else 300
    seconds = 2.0 if args.quick else 4.0

    import httpx

    from bev.engines import NatsServer, Postgres, Redis, free_port

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, NatsServer(Path(tmp) / "nats") as nats_server, \
            Postgres(Path(tmp) / "pg", fsync=False) as postgres, Redis(Path(tmp) / "redis") as redis:
        avatar_conn, avatar_child = ctx.Pipe()
        avatar = ctx.Process(target=_serve_avatar, args=(nats_server.url, avatar_child))
        avatar.start()
        assert avatar_conn.recv() == "ready"
        ports = (free_port(), free_port())
        gw_conn, gw_child = ctx.Pipe()
        gateways = ctx.Process(target=_serve_gateways, args=(nats_server.url, postgres.dsn, redis.url, ports, gw_child))
        gateways.start()
        api_key = gw_conn.recv()
        targets = {"guarded": f"http://127.0.0.1:{ports[0]}", "open": f"http://127.0.0.1:{ports[1]}"}
        latencies: dict[str, list[float]] = {name: [] for name in targets}
        rates: dict[str, list[float]] = {name: [] for name in targets}
        counter = [0]
        guarded_calls = 0

        async def run() -> None:
            nonlocal guarded_calls
            headers = {"Authorization": f"Bearer {api_key}"}
            async with httpx.AsyncClient(headers=headers, timeout=30) as one:
                pool = [httpx.AsyncClient(headers=headers, timeout=30) for _ in range(args.concurrency)]
                try:
                    for name, url in targets.items():  # warm-up: connections, caches, the script
                        await _latency(one, url, 30, counter)
                        guarded_calls += 30 if name == "guarded" else 0
                    for r in range(rounds):
                        order = list(targets) if r % 2 == 0 else list(reversed(targets))
                        for name in order:
                            latencies[name] += await _latency(one, targets[name], per_round, counter)
                            guarded_calls += per_round if name == "guarded" else 0
                        for name in order:
                            before = counter[0]
                            rates[name].append(await _throughput(pool, targets[name], seconds, counter))
                            guarded_calls += counter[0] - before if name == "guarded" else 0
                finally:
                    for client in pool:
                        await client.aclose()

        asyncio.run(run())
        gw_conn.send("stop")
        audited = gw_conn.recv()
        gateways.join(30)
        avatar_conn.send("stop")
        avatar.join(30)

    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3

    result: dict[str, Any] = {"bench": "gateway", "route": f"POST {ROUTE}", "rounds": rounds,
                              "concurrency": args.concurrency}
    for name in targets:
        result[f"{name}_p50_ms"] = round(p(latencies[name], 0.5), 3)
        result[f"{name}_p99_ms"] = round(p(latencies[name], 0.99), 3)
        result[f"{name}_rps"] = round(statistics.median(rates[name]), 1)
    result["p50_added"] = round(result["guarded_p50_ms"] / result["open_p50_ms"] - 1, 4)
    result["throughput_ratio"] = round(result["guarded_rps"] / result["open_rps"], 4)
    result["audited"] = f"{audited}/{guarded_calls}"
    result["pass"] = result["p50_added"] <= 0.10 and result["throughput_ratio"] >= 0.9 and audited == guarded_calls
    for name in targets:
        print(f"{name:8} p50 {result[f'{name}_p50_ms']:.3f} ms  p99 {result[f'{name}_p99_ms']:.3f} ms  "
              f"{result[f'{name}_rps']:.0f} req/s", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
