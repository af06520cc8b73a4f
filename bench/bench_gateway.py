"""The price of the gateway's guard (API key, rate limit, audit) on a cheap route, in one run.

Starts nats-server, PostgreSQL and Redis in a temp dir, the avatar and swarm servicers in one
process, and in another process two gateways over the same bus. The route measured is the cheapest
audited (not GET) one the fleet has: PUT /api/v1/avatar/{id}/personality on 64 investigations, each
pass over them switching every one to the other of two personalities (an RPC to an in-memory state
machine). The avatar asks the swarm whether the caller may see an investigation and trusts the
answer for access_cache_s, set here past the run: the swarm is asked once per investigation, in
the warm-up, so what is measured is the route, not the swarm's database.
`--route speak` measures POST /api/v1/avatar/speak {"text": "ok"} instead, which needs no swarm:
espeak-ng spends ~0.7 ms of CPU on ~0.5 s of speech and the answer is ~28 KB of base64 WAV, 1 to
2 ms more per call than the default route (whose open p50 read 3.2 to 5.3 ms on 2 cores shared
with other work). The guard's price is about the same per call on either, so on speech it is a
smaller share: its p50_added and throughput_ratio understate the guard's by about a quarter.
Two gateways:
- "guarded": the gateway as it ships (services/gateway/api.py create_app): each request's key is
  verified (cached), its Redis bucket taken, and, the route not being a GET, an audit row written
  to PostgreSQL and an event published on NATS after the answer;
- "open": the same app with the guard taken out of its middleware list and the caller set by
  this bench (what the routes need), so the route, its validation and its RPC are the same.
The client (this process) measures both in interleaved rounds, so drift on a shared machine hits
both alike: sequential latency (one request in flight, keep-alive) -> p50/p99, and throughput
with --concurrency clients -> requests/s. It also checks that every guarded call was audited.
The last stdout line is one JSON object.

    .venv/bin/python bench/bench_gateway.py                 # ~70 s on 2 shared cores
    .venv/bin/python bench/bench_gateway.py --quick         # ~30 s
    .venv/bin/python bench/bench_gateway.py --route speak   # speech instead (see above)
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

ROUTES = {"personality": "PUT /api/v1/avatar/{investigation_id}/personality", "speak": "POST /api/v1/avatar/speak"}
TEAM = "bench"  # the bench key's, and the investigations'
INVESTIGATIONS = 64
WARM_UP = 64  # requests per gateway before measuring: every investigation once, so the access cache is full


def _serve_avatar(nats_url: str, dsn: str, data_dir: Path, route: str, ready: Connection) -> None:
    import nats

    from bev.rpc import InstanceInfo
    from bev.testing.serving import serving_on_nats
    from services.avatar.servicer import assemble
    from services.avatar.settings import AvatarConfig
    from services.avatar.testing import avatar_beside_swarm

    async def speak_only() -> None:
        nc = await nats.connect(nats_url)  # the avatar's own, as its process has
        try:
            avatar = await assemble(InstanceInfo("avatar", "bench-avatar", "bench"), AvatarConfig(), nc)
            async with serving_on_nats(avatar, nats_url, max_concurrency=256):
                ready.send([])
                await asyncio.get_running_loop().run_in_executor(None, ready.recv)  # until told to stop
        finally:
            await nc.close()

    async def beside_swarm() -> None:
        # Access trusted past the run: the swarm is asked once per investigation, in the warm-up.
        async with avatar_beside_swarm(nats_url, dsn, data_dir, AvatarConfig(access_cache_s=86400)) as stack:
            ready.send([await stack.investigation(team=TEAM) for _ in range(INVESTIGATIONS)])
            await asyncio.get_running_loop().run_in_executor(None, ready.recv)

    asyncio.run(speak_only() if route == "speak" else beside_swarm())


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
            key, whole = await guard.keys.create("bench", ["write", "read"], TEAM, max_tlp=Tlp.RED,
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


def _receive(conn: Connection, process: Any, timeout_s: float = 300.0) -> Any:
    """The child's next message. A child that died or hangs is an error here, not a bench that waits
    forever (this process keeps the child's end of the pipe open, so recv() alone would)."""
    deadline = time.monotonic() + timeout_s
    while not conn.poll(1.0):
        if not process.is_alive():
            raise RuntimeError(f"the {process.name} process exited ({process.exitcode}); its stderr says why")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {process.name} process sent nothing in {timeout_s:.0f} s")
    return conn.recv()


def _call(client: Any, url: str, route: str, ids: list[str], n: int) -> Any:
    """The n-th call of the route: each investigation in turn, its personality switched every pass."""
    if route == "speak":
        return client.post(f"{url}/api/v1/avatar/speak", json={"text": "ok"})
    personality = ("mentor", "analyst")[n // len(ids) % 2]
    return client.put(f"{url}/api/v1/avatar/{ids[n % len(ids)]}/personality", json={"personality": personality})


async def _latency(client: Any, url: str, route: str, ids: list[str], n: int, counter: list[int]) -> list[float]:
    times = []
    for _ in range(n):
        counter[0] += 1
        began = time.perf_counter()
        answer = await _call(client, url, route, ids, counter[0])
        times.append(time.perf_counter() - began)
        if answer.status_code != 200:
            raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
    return times


async def _throughput(clients: list[Any], url: str, route: str, ids: list[str], seconds: float,
                      counter: list[int]) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(client: Any) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            counter[0] += 1
            answer = await _call(client, url, route, ids, counter[0])
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
    parser.add_argument("--route", choices=list(ROUTES), default="personality")
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
        # Daemons: when the bench fails, they are ended rather than joined forever at exit.
        avatar = ctx.Process(target=_serve_avatar, name="avatar", daemon=True,
                             args=(nats_server.url, postgres.dsn, Path(tmp) / "swarm", args.route, avatar_child))
        avatar.start()
        ids: list[str] = _receive(avatar_conn, avatar)  # once served
        ports = (free_port(), free_port())
        gw_conn, gw_child = ctx.Pipe()
        gateways = ctx.Process(target=_serve_gateways, name="gateways", daemon=True,
                               args=(nats_server.url, postgres.dsn, redis.url, ports, gw_child))
        gateways.start()
        api_key = _receive(gw_conn, gateways)
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
                        await _latency(one, url, args.route, ids, WARM_UP, counter)
                        guarded_calls += WARM_UP if name == "guarded" else 0
                    for r in range(rounds):
                        order = list(targets) if r % 2 == 0 else list(reversed(targets))
                        for name in order:
                            latencies[name] += await _latency(one, targets[name], args.route, ids, per_round,
                                                              counter)
                            guarded_calls += per_round if name == "guarded" else 0
                        for name in order:
                            before = counter[0]
                            rates[name].append(await _throughput(pool, targets[name], args.route, ids, seconds,
                                                                 counter))
                            guarded_calls += counter[0] - before if name == "guarded" else 0
                finally:
                    for client in pool:
                        await client.aclose()

        asyncio.run(run())
        gw_conn.send("stop")
        audited = _receive(gw_conn, gateways)
        gateways.join(30)
        avatar_conn.send("stop")
        avatar.join(30)

    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3

    result: dict[str, Any] = {"bench": "gateway", "route": ROUTES[args.route], "rounds": rounds,
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
