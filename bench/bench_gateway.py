"""The price of the gateway's HTTP edge and of its guard on a cheap route, in one run.

Starts nats-server, PostgreSQL and Redis in a temp dir, the avatar and swarm servicers in one
process, and in another process two gateways over the same bus. The route measured is the cheapest
audited (not GET) one the fleet has: PUT /api/v1/avatar/{id}/personality on 64 investigations, each
pass over them switching every one to the other of two personalities (an RPC to an in-memory state
machine). The avatar asks the swarm whether the caller may see an investigation and trusts the
answer for access_cache_s, set here past the run: the swarm is asked once per investigation, in
the warm-up, so what is measured is the route, not the swarm's database.
`--route speak` measures POST /api/v1/avatar/speak {"text": "ok"} instead, which needs no swarm:
espeak-ng spends ~0.7 ms of CPU on ~0.5 s of speech and the answer is ~28 KB of base64 WAV, 1 to
2 ms more per call than the default route. The guard's price is about the same per call on either,
so on speech it is a smaller share.

Three targets, the same work behind each:
- "direct": the route's RPC (Avatar.SetPersonality / Avatar.Speak) called from this process with
  the generated client over its own NATS connection, as the gateway calls it: the baseline;
- "guarded": the gateway as it ships (services/gateway/api.py create_app behind http_server's
  uvicorn config): each request's key is verified (cached), its Redis bucket taken, and, the route
  not being a GET, an audit row written to PostgreSQL and an event published on NATS after the answer;
- "open": the same app with the guard taken out of its middleware list and the caller set by
  this bench (what the routes need), so the route, its validation and its RPC are the same.
The client (this process) measures all three in interleaved rounds, so drift on a shared machine
hits them alike: sequential latency (one request in flight; HTTP over one keep-alive connection)
-> p50/p99, and throughput with --concurrency callers (HTTP: one connection each) -> requests/s.
The HTTP client is a minimal one over asyncio streams (a request written, the status line, headers
and Content-Length body read), so the client costs about what the RPC client does and the gap is
the gateway's. It also checks that every guarded call was audited.

Figures (the last stdout line is one JSON object):
- http_p50_added_ms / http_throughput_ratio: the gateway as it ships against the direct RPC
  (issue 16: under 1 ms, at least 0.8); open_* the same without the guard;
- guard_p50_added / guard_throughput_ratio: guarded against open (C8: at most 0.10, at least 0.9);
- cpu_us_per_request / guard_cpu_us / guard_cpu_ratio: CPU per request in the throughput windows,
  of the gateways' process and of PostgreSQL, Redis and nats-server (what the guard writes to),
  guarded and open; their difference is the guard's own cost, and open / guarded the throughput
  ratio CPU alone would allow. On a shared machine these move much less than requests/s do.
`--profile-gateways FILE` writes a cProfile of the gateway process (pstats format) to FILE.

    .venv/bin/python bench/bench_gateway.py                 # ~90 s on 2 shared cores
    .venv/bin/python bench/bench_gateway.py --quick         # ~40 s
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
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUTES = {"personality": "PUT /api/v1/avatar/{investigation_id}/personality", "speak": "POST /api/v1/avatar/speak"}
TEAM = "bench"  # the bench key's, and the investigations'
INVESTIGATIONS = 64
WARM_UP = 64  # requests per target before measuring: every investigation once, so the access cache is full
TARGETS = ("direct", "guarded", "open")


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


def _serve_gateways(nats_url: str, dsn: str, redis_url: str, ports: tuple[int, int], profile: str,
                    conn: Connection) -> None:
    import cProfile

    import nats
    import uvloop

    from bev.access import ApiKey
    from bev.manifest import load_manifest
    from bev.vocab import Tlp
    from services.gateway.api import create_app
    from services.gateway.deps import Caller
    from services.gateway.http_server import GatewayServer, server_config
    from services.gateway.servicer import open_guard
    from services.gateway.settings import GatewayConfig

    profiler = cProfile.Profile() if profile else None

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
            record = ApiKey(key.id, key.name, key.team, key.scopes, key.max_tlp, key.requests_per_hour,
                            key.tokens_per_day, key.created_at)
            caller = Caller(record)

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
            conn.send((whole, caller.access().SerializeToString()))
            if profiler is not None:
                profiler.enable()
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks)
            await guard.drain()
            async with guard.keys.pool.connection() as db:
                row = await (await db.execute("select count(*) from access.audit where key_id = %s", (key.id,))).fetchone()
            conn.send(int(row[0]) if row else 0)
        await nc.close()

    uvloop.run(main())  # as the gateway service runs (libs/bev/runtime.py)


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


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a request written, its answer read (Content-Length
    bodies only, which is what the gateway sends for these routes). Cheap, so that what the bench
    measures is the server."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in {"host": f"{host}:{port}", **headers}.items())
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        request = (f"{method} {path} HTTP/1.1\r\n{self.fixed}content-type: application/json\r\n"
                   f"content-length: {len(body)}\r\n\r\n".encode() + body)
        reused = self._streams is not None
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            # The server closed the connection while it sat idle (keep-alive timeout, between rounds):
            # a new one, as any keep-alive client does.
            writer.close()
            self._streams = reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        answer = await reader.readexactly(length)
        if b"\r\nconnection: close" in head.lower():
            writer.close()
            self._streams = None
        return status, answer

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


Call = Callable[[int], Awaitable[None]]


def _cpu_s(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each process in `pids` and of its children, by pid."""
    import psutil

    spent: dict[int, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for each in [root, *root.children(recursive=True)]:
                times = each.cpu_times()
                spent[each.pid] = times.user + times.system
        except psutil.NoSuchProcess:  # a PostgreSQL backend that ended between the listing and the read
            continue
    return spent


def _cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _http_call(conn: HttpConnection, route: str, ids: list[str]) -> Call:
    async def call(n: int) -> None:
        if route == "speak":
            status, answer = await conn.request("POST", "/api/v1/avatar/speak", b'{"text": "ok"}')
        else:
            personality = ("mentor", "analyst")[n // len(ids) % 2]
            status, answer = await conn.request("PUT", f"/api/v1/avatar/{ids[n % len(ids)]}/personality",
                                                json.dumps({"personality": personality}).encode())
        if status != 200:
            raise RuntimeError(f"{conn.port}: {status} {answer[:200]!r}")
    return call


def _direct_call(client: Any, route: str, ids: list[str], access: Any) -> Call:
    from bev.avatar.v1 import avatar_pb2

    personalities = (avatar_pb2.PERSONALITY_MENTOR, avatar_pb2.PERSONALITY_ANALYST)

    async def call(n: int) -> None:
        # The request the route builds (services/gateway/routes/avatar.py), sent the way it sends it.
        if route == "speak":
            await client.Speak(avatar_pb2.SpeakRequest(text="ok", personality=avatar_pb2.PERSONALITY_UNSPECIFIED))
        else:
            await client.SetPersonality(avatar_pb2.SetPersonalityRequest(
                investigation_id=ids[n % len(ids)], personality=personalities[n // len(ids) % 2], access=access))
    return call


async def _latency(call: Call, n: int, counter: list[int]) -> list[float]:
    times = []
    for _ in range(n):
        counter[0] += 1
        began = time.perf_counter()
        await call(counter[0])
        times.append(time.perf_counter() - began)
    return times


async def _throughput(calls: list[Call], seconds: float, counter: list[int]) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(call: Call) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            counter[0] += 1
            await call(counter[0])
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in calls))
    return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--route", choices=list(ROUTES), default="personality")
    parser.add_argument("--profile-gateways", metavar="FILE", default="",
                        help="write a cProfile (pstats) of the gateway process to FILE")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 6)
    per_round = 100 if args.quick else 300
    seconds = 2.0 if args.quick else 4.0

    import nats
    import uvloop

    from bev.avatar.v1.avatar_rpc import AvatarClient
    from bev.common.v1 import common_pb2
    from bev.engines import NatsServer, Postgres, Redis, free_port
    from services.gateway.settings import GatewayConfig

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
        profile = str(Path(args.profile_gateways).resolve()) if args.profile_gateways else ""
        gateways = ctx.Process(target=_serve_gateways, name="gateways", daemon=True,
                               args=(nats_server.url, postgres.dsn, redis.url, ports, profile, gw_child))
        gateways.start()
        api_key, access_bytes = _receive(gw_conn, gateways)
        access = common_pb2.Access.FromString(access_bytes)
        latencies: dict[str, list[float]] = {name: [] for name in TARGETS}
        rates: dict[str, list[float]] = {name: [] for name in TARGETS}
        # CPU seconds spent during the guarded and open throughput windows, and requests served in
        # them: by the gateways' process, and by what the guard writes to (PostgreSQL, Redis, NATS).
        # CPU per request hardly moves with what else runs on the machine, unlike requests/s.
        cpu: dict[str, dict[str, float]] = {name: {"gateway": 0.0, "backends": 0.0, "requests": 0.0}
                                            for name in ("guarded", "open")}
        backend_pids = [pid for pid in (postgres.pid, redis.pid, nats_server.pid) if pid is not None]
        counter = [0]
        guarded_calls = 0

        async def run() -> None:
            nonlocal guarded_calls
            nc = await nats.connect(nats_server.url)  # the direct caller's own, as the gateway has its own
            avatar_client = AvatarClient.over_nats(nc, timeout_s=GatewayConfig().rpc_timeout_s)
            headers = {"authorization": f"Bearer {api_key}"}
            port_of = {"guarded": ports[0], "open": ports[1]}
            connections: list[HttpConnection] = []

            def calls(name: str, n: int) -> list[Call]:
                if name == "direct":
                    return [_direct_call(avatar_client, args.route, ids, access) for _ in range(n)]
                made = [HttpConnection("127.0.0.1", port_of[name], headers) for _ in range(n)]
                connections.extend(made)
                return [_http_call(c, args.route, ids) for c in made]

            one = {name: calls(name, 1)[0] for name in TARGETS}
            pool = {name: calls(name, args.concurrency) for name in TARGETS}
            try:
                for name in TARGETS:  # warm-up: connections, caches, the script
                    before = counter[0]
                    await _latency(one[name], WARM_UP, counter)
                    await _throughput(pool[name], 0.3, counter)
                    guarded_calls += counter[0] - before if name == "guarded" else 0
                for r in range(rounds):
                    order = list(TARGETS) if r % 2 == 0 else list(reversed(TARGETS))
                    for name in order:
                        before = counter[0]
                        latencies[name] += await _latency(one[name], per_round, counter)
                        guarded_calls += counter[0] - before if name == "guarded" else 0
                    for name in order:
                        before = counter[0]
                        gateway_before, backends_before = _cpu_s([gateways.pid or 0]), _cpu_s(backend_pids)
                        rates[name].append(await _throughput(pool[name], seconds, counter))
                        if name in cpu:
                            cpu[name]["gateway"] += _cpu_between(gateway_before, _cpu_s([gateways.pid or 0]))
                            cpu[name]["backends"] += _cpu_between(backends_before, _cpu_s(backend_pids))
                            cpu[name]["requests"] += counter[0] - before
                        guarded_calls += counter[0] - before if name == "guarded" else 0
            finally:
                for connection in connections:
                    connection.close()
                await nc.close()

        uvloop.run(run())
        gw_conn.send("stop")
        audited = _receive(gw_conn, gateways)
        gateways.join(30)
        avatar_conn.send("stop")
        avatar.join(30)

    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3

    result: dict[str, Any] = {"bench": "gateway", "route": ROUTES[args.route], "rounds": rounds,
                              "concurrency": args.concurrency}
    for name in TARGETS:
        result[f"{name}_p50_ms"] = round(p(latencies[name], 0.5), 3)
        result[f"{name}_p99_ms"] = round(p(latencies[name], 0.99), 3)
        result[f"{name}_rps"] = round(statistics.median(rates[name]), 1)
    result["http_p50_added_ms"] = round(result["guarded_p50_ms"] - result["direct_p50_ms"], 3)
    result["http_throughput_ratio"] = round(result["guarded_rps"] / result["direct_rps"], 4)
    result["open_p50_added_ms"] = round(result["open_p50_ms"] - result["direct_p50_ms"], 3)
    result["open_throughput_ratio"] = round(result["open_rps"] / result["direct_rps"], 4)
    result["guard_p50_added"] = round(result["guarded_p50_ms"] / result["open_p50_ms"] - 1, 4)
    result["guard_throughput_ratio"] = round(result["guarded_rps"] / result["open_rps"], 4)
    per_request = {name: {part: round(1e6 * cpu[name][part] / max(1.0, cpu[name]["requests"]), 1)
                          for part in ("gateway", "backends")} for name in cpu}
    result["cpu_us_per_request"] = per_request
    result["guard_cpu_us"] = {part: round(per_request["guarded"][part] - per_request["open"][part], 1)
                              for part in ("gateway", "backends")}
    # What the guard would leave of the open gateway's throughput if CPU were all that limited it.
    open_cpu, guarded_cpu = sum(per_request["open"].values()), sum(per_request["guarded"].values())
    result["guard_cpu_ratio"] = round(open_cpu / guarded_cpu, 4) if guarded_cpu else None
    result["audited"] = f"{audited}/{guarded_calls}"  # every guarded call, warm-up included
    result["targets"] = {"http_p50_added_ms": "< 1", "http_throughput_ratio": ">= 0.8",
                         "guard_p50_added": "<= 0.10", "guard_throughput_ratio": ">= 0.9"}
    result["targets_met"] = {
        "http_p50_added_ms": result["http_p50_added_ms"] < 1.0,
        "http_throughput_ratio": result["http_throughput_ratio"] >= 0.8,
        "guard_p50_added": result["guard_p50_added"] <= 0.10,
        "guard_throughput_ratio": result["guard_throughput_ratio"] >= 0.9}
    result["pass"] = all(result["targets_met"].values()) and audited == guarded_calls
    for name in TARGETS:
        used = per_request.get(name)
        print(f"{name:8} p50 {result[f'{name}_p50_ms']:.3f} ms  p99 {result[f'{name}_p99_ms']:.3f} ms  "
              f"{result[f'{name}_rps']:.0f} req/s"
              + (f"  CPU/request: gateway {used['gateway']:.0f} us, backends {used['backends']:.0f} us" if used else ""),
              file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
