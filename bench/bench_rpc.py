"""RPC layer overhead: our NATS and gRPC paths against raw nats-py / grpc.aio, in one run.

Starts its own nats-server in a temp dir and two server processes (so client and server never
share an event loop or a GIL):
- "ours": the Echo servicer behind NatsRpcServer and GrpcRpcServer (dispatcher, spans, metrics);
- "raw":  a nats-py queue subscriber that answers msg.data, and a grpc.aio generic unary handler
          that returns its bytes (no protobuf, no headers, no spans, no metrics).
The client process measures, for each of the four targets (plus an in-process call of the
servicer method for reference):
- latency: sequential calls, one in flight -> p50 / p99 in microseconds;
- throughput: --concurrency callers for --duration seconds -> calls/s, and CPU us per call of
  the client, the server process and nats-server over that phase.
Targets are measured in interleaved rounds so drift on a shared machine hits both sides alike;
ratios compare figures from the same run. The last stdout line is one JSON object.
Every process (client, both servers) runs on uvloop, as the fleet does (bev.runtime); `--loop
asyncio` runs them on the standard loop to compare. uvloop speeds raw nats-py up as much as ours,
so it moves the ratios little: they measure the RPC layer's own per-call work.

    .venv/bin/python bench/bench_rpc.py            # ~60-75 s on 2 shared cores
    .venv/bin/python bench/bench_rpc.py --quick    # ~12-15 s
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# The Echo servicer is test code (tests/rpc/echo.py), not shipped: make the checkout importable,
# also in the spawned server processes, which inherit sys.path through multiprocessing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RAW_SUBJECT = "bench.raw.echo"
RAW_QUEUE = "bench.raw"
RAW_GRPC_SERVICE = "bench.raw.Echo"
RAW_GRPC_PATH = f"/{RAW_GRPC_SERVICE}/Echo"
MAX_REQUEST_BYTES = 1024 * 1024
LATENCY_BLOCK = 100  # sequential calls per target before switching to the next one

# Issue 16: the NATS path within 1.3x raw nats-py's p50 and at 0.7x its throughput; gRPC at 0.7x
# raw grpc.aio's throughput (its p50 stays within the earlier 1.5x).
TARGETS = {
    "nats_p50_ratio": ("<=", 1.3),
    "nats_throughput_ratio": (">=", 0.7),
    "grpc_p50_ratio": ("<=", 1.5),
    "grpc_throughput_ratio": (">=", 0.7),
}

Call = Callable[[], Awaitable[Any]]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Server processes


def run_on(loop: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` to completion on a new event loop of the kind asked for."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _server_process(kind: str, nats_url: str, max_concurrency: int, tracing: bool, loop: str,
                    conn: Connection) -> None:
    os.dup2(2, 1)  # nothing a server prints may land on the bench's stdout (its last line is JSON)
    try:
        run_on(loop, _serve(kind, nats_url, max_concurrency, tracing, conn))
    except KeyboardInterrupt:
        pass


async def _serve(kind: str, nats_url: str, max_concurrency: int, tracing: bool, conn: Connection) -> None:
    import grpc
    import nats

    loop = asyncio.get_running_loop()
    nc = await nats.connect(nats_url)
    stoppers: list[Callable[[], Awaitable[None]]] = []
    if kind == "ours":
        from bev.rpc import InstanceInfo
        from bev.rpc.grpc_transport import GrpcRpcServer
        from bev.rpc.nats_transport import NatsRpcServer
        from bev.telemetry import ensure_tracer_provider
        from tests.rpc.echo import Echo

        if tracing:
            ensure_tracer_provider()  # the fleet always has a TracerProvider: spans are real
        info = InstanceInfo(service="echo")
        servicer = Echo(info)
        on_nats = NatsRpcServer(nc, servicer, max_request_bytes=MAX_REQUEST_BYTES, default_timeout_s=10,
                                max_concurrency=max_concurrency, instance=info.instance)
        on_grpc = GrpcRpcServer(servicer, host="127.0.0.1", port=0, max_request_bytes=MAX_REQUEST_BYTES,
                                default_timeout_s=10)
        await on_nats.start()
        port = await on_grpc.start()
        stoppers += [lambda: on_nats.stop(1), lambda: on_grpc.stop(1)]
    else:
        async def raw_echo(msg: Any) -> None:
            await msg.respond(msg.data)

        sub = await nc.subscribe(RAW_SUBJECT, queue=RAW_QUEUE, cb=raw_echo)

        async def echo_bytes(data: bytes, _context: Any) -> bytes:
            return data

        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES * 2)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            RAW_GRPC_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo_bytes)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stoppers += [sub.unsubscribe, lambda: server.stop(1)]
    await nc.flush()
    conn.send({"grpc_port": port})
    profiler: cProfile.Profile | None = None
    while True:  # "profile" starts a profile of this loop's thread, "profile:<file>" writes it; else stop
        try:
            command = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            break
        if command == "profile":
            profiler = cProfile.Profile()
            profiler.enable()  # on the event loop's thread, where the calls are served
        elif isinstance(command, str) and command.startswith("profile:") and profiler is not None:
            profiler.disable()
            profiler.dump_stats(command.removeprefix("profile:"))
            conn.send("profiled")
        else:
            break
    for stop in stoppers:
        await stop()
    await nc.close()


class ServerProcess:
    def __init__(self, kind: str, nats_url: str, max_concurrency: int, tracing: bool, loop: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_server_process, args=(kind, nats_url, max_concurrency, tracing, loop, child),
                                   name=f"bench-rpc-{kind}", daemon=True)
        self.process.start()
        self.kind = kind
        self.grpc_port = 0

    def wait_ready(self, timeout_s: float = 60) -> None:
        if not self._conn.poll(timeout_s):
            raise RuntimeError(f"{self.kind} server process did not start in {timeout_s}s")
        self.grpc_port = self._conn.recv()["grpc_port"]

    def profile(self, path: str | None) -> None:
        """Start profiling the server's event loop thread (None), or stop and write it to `path`."""
        self._conn.send("profile" if path is None else f"profile:{path}")
        if path is not None and not (self._conn.poll(30) and self._conn.recv() == "profiled"):
            raise RuntimeError(f"{self.kind} server process wrote no profile")

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# --------------------------------------------------------------------------------------------
# Measurement


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 where /proc cannot tell."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by the client (this process), a server process and nats-server over one phase."""

    def __init__(self, server_pid: int | None, nats_pid: int | None) -> None:
        self.pids = {"server": server_pid, "nats": nats_pid}

    def read(self) -> dict[str, float]:
        return {"client": time.process_time(), **{k: process_cpu_s(p) for k, p in self.pids.items()}}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def sequential(call: Call, calls: int) -> list[float]:
    """Latency of `calls` calls made one after the other, in microseconds."""
    clock = time.perf_counter_ns
    samples: list[float] = []
    for _ in range(calls):
        started = clock()
        await call()
        samples.append((clock() - started) / 1000)
    return samples


async def concurrent(call: Call, concurrency: int, duration_s: float) -> tuple[int, float]:
    """(calls completed, seconds) with `concurrency` callers looping until the time is up."""
    stop_at = time.perf_counter() + duration_s
    counts = [0] * concurrency

    async def caller(slot: int) -> None:
        while time.perf_counter() < stop_at:
            await call()
            counts[slot] += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return sum(counts), time.perf_counter() - started


class Figures:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.calls = 0
        self.seconds = 0.0
        self.round_p50: list[float] = []
        self.round_rate: list[float] = []
        self.cpu_s = {"client": 0.0, "server": 0.0, "nats": 0.0}

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        out = {"p50_us": round(percentile(ordered, 0.50), 1), "p99_us": round(percentile(ordered, 0.99), 1)}
        if self.seconds:
            out["calls_per_s"] = round(self.calls / self.seconds, 1)
        if self.calls:  # CPU per call under throughput load: where the time goes
            for side, seconds in self.cpu_s.items():
                out[f"{side}_cpu_us_per_call"] = round(seconds / self.calls * 1e6, 1)
        return out


# Where a profiled function's own time goes: the first of these its file path contains.
PROFILE_GROUPS = (
    ("libs/bev/rpc/", "bev.rpc"), ("libs/bev/telemetry", "bev.telemetry"), ("bev/echo/", "echo servicer/client"),
    ("nats/micro/", "nats-py micro"), ("nats/", "nats-py"), ("opentelemetry/", "opentelemetry"),
    ("google/protobuf", "protobuf"), ("asyncio/", "asyncio (+ idle wait)"), ("uvloop", "uvloop"),
)


def profile_groups(path: str, calls: int) -> dict[str, float]:
    """A cProfile dump as microseconds of own time per call, by where the code lives, plus the
    Python/C function calls made per call ("function calls"). cProfile slows Python code down
    several times: compare groups and sides, not with the unprofiled figures. The profile starts
    inside the running loop, so the time the loop spends outside Python (uvloop's C code, the idle
    wait in epoll) lands on the asyncio row: that row is not work per call."""
    totals: dict[str, float] = {}
    function_calls = 0
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    for (filename, _line, _function), (_cc, ncalls, own_s, _cum, _callers) in stats.items():
        group = next((label for marker, label in PROFILE_GROUPS if marker in filename),
                     "builtins (C: sockets, protobuf, dicts...)" if filename == "~" else "other Python")
        totals[group] = totals.get(group, 0.0) + own_s
        function_calls += ncalls
    per_call = {group: round(seconds / calls * 1e6, 2) for group, seconds in
                sorted(totals.items(), key=lambda item: -item[1])}
    per_call["function calls"] = round(function_calls / calls, 1)
    return per_call


async def profile_phase(args: argparse.Namespace, call: Call, server: ServerProcess) -> dict[str, dict[str, float]]:
    """cProfile of the client and of the server process over one throughput phase of `call`."""
    with tempfile.TemporaryDirectory(prefix="bench-rpc-profile-") as tmp:
        client_path, server_path = f"{tmp}/client.prof", f"{tmp}/server.prof"
        server.profile(None)
        profiler = cProfile.Profile()
        profiler.enable()
        done, _seconds = await concurrent(call, args.concurrency, args.duration)
        profiler.disable()
        profiler.dump_stats(client_path)
        await asyncio.get_running_loop().run_in_executor(None, server.profile, server_path)
        return {"client": profile_groups(client_path, done), "server": profile_groups(server_path, done)}


async def run_client(
    args: argparse.Namespace, nats_url: str, ours_port: int, raw_port: int, pids: dict[str, int | None],
    servers: dict[str, ServerProcess],
) -> dict[str, Any]:
    import grpc
    import nats

    from bev.echo.v1 import echo_pb2
    from bev.echo.v1.echo_rpc import EchoClient
    from bev.rpc import CallContext, InstanceInfo
    from bev.telemetry import ensure_tracer_provider
    from tests.rpc.echo import Echo

    if args.tracing:
        ensure_tracer_provider()
    payload = os.urandom(args.payload)
    request = echo_pb2.EchoRequest(payload=payload)

    nc_ours = await nats.connect(nats_url)
    nc_raw = await nats.connect(nats_url)
    ours_nats = EchoClient.over_nats(nc_ours, timeout_s=10)
    ours_grpc = EchoClient.over_grpc(f"127.0.0.1:{ours_port}", timeout_s=10)
    raw_channel = grpc.aio.insecure_channel(f"127.0.0.1:{raw_port}")
    raw_grpc_call = raw_channel.unary_unary(RAW_GRPC_PATH)  # bytes in, bytes out
    servicer = Echo(InstanceInfo(service="echo"))

    async def call_ours_nats() -> None:
        await ours_nats.Echo(request)

    async def call_raw_nats() -> None:
        await nc_raw.request(RAW_SUBJECT, payload, timeout=10)

    async def call_ours_grpc() -> None:
        await ours_grpc.Echo(request)

    async def call_raw_grpc() -> None:
        await raw_grpc_call(payload, timeout=10)

    async def call_in_process() -> None:
        ctx = CallContext(service="echo", method="Echo", transport="nats", deadline=time.monotonic() + 10)
        await servicer.Echo(request, ctx)

    # Every path must really echo before it is timed.
    assert (await ours_nats.Echo(request)).payload == payload
    assert (await ours_grpc.Echo(request)).payload == payload
    assert (await nc_raw.request(RAW_SUBJECT, payload, timeout=10)).data == payload
    assert await raw_grpc_call(payload, timeout=10) == payload

    calls: dict[str, Call] = {
        "nats_ours": call_ours_nats,
        "nats_raw": call_raw_nats,
        "grpc_ours": call_ours_grpc,
        "grpc_raw": call_raw_grpc,
    }
    log(f"warming up ({args.warmup:.1f}s per target)")
    for call in calls.values():
        await concurrent(call, args.concurrency, args.warmup / 2)
        await sequential(call, max(50, args.latency_calls // 10))
    await sequential(call_in_process, 2000)

    meters = {name: CpuMeter(pids[name.split("_")[1]], pids["nats"]) for name in calls}
    figures = {name: Figures() for name in calls}
    in_process = Figures()
    for round_no in range(args.rounds):
        # Alternate which side goes first so slow drift does not favour one of them.
        order = list(calls) if round_no % 2 == 0 else list(reversed(calls))
        # Latency in small blocks taken in turn, so a noisy neighbour hits every target alike.
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for start in range(0, args.latency_calls, LATENCY_BLOCK):
            for name in order:
                samples[name] += await sequential(calls[name], min(LATENCY_BLOCK, args.latency_calls - start))
        for name in order:
            figures[name].latencies += samples[name]
            figures[name].round_p50.append(statistics.median(samples[name]))
        for name in order:
            before = meters[name].read()
            done, seconds = await concurrent(calls[name], args.concurrency, args.duration)
            after = meters[name].read()
            for side in figures[name].cpu_s:
                figures[name].cpu_s[side] += after[side] - before[side]
            figures[name].calls += done
            figures[name].seconds += seconds
            figures[name].round_rate.append(done / seconds)
        in_process.latencies += await sequential(call_in_process, args.latency_calls)
        log(f"round {round_no + 1}/{args.rounds}: " + ", ".join(
            f"{name} p50 {figures[name].round_p50[-1]:.0f}us {figures[name].round_rate[-1]:.0f}/s" for name in calls))

    profile: dict[str, dict[str, dict[str, float]]] = {}
    if args.profile:
        for name in ("nats_ours", "nats_raw"):
            profile[name] = await profile_phase(args, calls[name], servers[name.split("_")[1]])

    await ours_grpc.close()
    await raw_channel.close()
    await nc_ours.close()
    await nc_raw.close()

    results = {name: fig.summary() for name, fig in figures.items()}
    results["in_process"] = in_process.summary()
    ratios: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for transport in ("nats", "grpc"):
        ours, raw = figures[f"{transport}_ours"], figures[f"{transport}_raw"]
        ratios[f"{transport}_p50_ratio"] = round(
            results[f"{transport}_ours"]["p50_us"] / results[f"{transport}_raw"]["p50_us"], 3)
        ratios[f"{transport}_throughput_ratio"] = round(
            results[f"{transport}_ours"]["calls_per_s"] / results[f"{transport}_raw"]["calls_per_s"], 3)
        per_round[f"{transport}_p50_ratio"] = [round(a / b, 3) for a, b in zip(ours.round_p50, raw.round_p50, strict=True)]
        per_round[f"{transport}_throughput_ratio"] = [
            round(a / b, 3) for a, b in zip(ours.round_rate, raw.round_rate, strict=True)]
    report: dict[str, Any] = {"results": results, "ratios": ratios, "ratios_per_round": per_round}
    if profile:
        report["profile_us_per_call"] = profile
    return report


def met(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def print_table(report: dict[str, Any]) -> None:
    results, ratios = report["results"], report["ratios"]
    log("")
    log(f"{'target':<12} {'p50 us':>9} {'p99 us':>9} {'calls/s':>9}   cpu us/call: {'client':>7} {'server':>7} {'nats':>6}")
    for name, row in results.items():
        rate = f"{row['calls_per_s']:>9.0f}" if "calls_per_s" in row else f"{'-':>9}"
        cpu = " ".join(f"{row.get(f'{side}_cpu_us_per_call', float('nan')):>7.1f}" for side in ("client", "server", "nats"))
        log(f"{name:<12} {row['p50_us']:>9.1f} {row['p99_us']:>9.1f} {rate}                {cpu}")
    log("")
    for key, (op, bound) in TARGETS.items():
        ok = report["targets_met"][key]
        log(f"{key:<24} {ratios[key]:>7.3f}   target {op} {bound}   {'ok' if ok else 'MISSED'}"
            f"   per round {report['ratios_per_round'][key]}")
    profile = report.get("profile_us_per_call")
    if profile:
        log("")
        log("profiled own time per call, us (cProfile inflates Python code; compare the columns):")
        columns = [(name, side) for name in profile for side in ("client", "server")]
        groups = list(dict.fromkeys(group for name, side in columns for group in profile[name][side]))
        log(f"{'':<42}" + "".join(f"{name.split('_')[1] + ' ' + side:>14}" for name, side in columns))
        for group in groups:
            log(f"{group:<42}" + "".join(f"{profile[name][side].get(group, 0.0):>14.2f}" for name, side in columns))
        log(f"{'total but asyncio':<42}" + "".join(
            f"{sum(v for g, v in profile[name][side].items() if not g.startswith(('asyncio', 'function calls'))):>14.2f}"
            for name, side in columns))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payload", type=int, default=64, help="payload bytes per call (default 64)")
    parser.add_argument("--latency-calls", type=int, default=1000,
                        help="sequential calls per target per round (default 1000)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds of concurrent calls per target per round (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per target (default 1)")
    parser.add_argument("--max-concurrency", type=int, default=256,
                        help="NatsRpcServer max_concurrency (default 256, above --concurrency)")
    parser.add_argument("--no-tracing", dest="tracing", action="store_false",
                        help="diagnostic only: no TracerProvider, so spans are no-ops (the fleet never runs "
                             "like this); shows what tracing costs")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of every process (default uvloop, as the fleet runs)")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, cProfile one NATS throughput phase of ours and of raw, in the client "
                             "and the server: own time per call by component (profiled, so inflated)")
    parser.add_argument("--quick", action="store_true", help="a ~15 s run: 2 rounds, short phases")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.latency_calls, args.warmup = 2, 0.75, 300, 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bev.engines import NatsServer

    started = time.perf_counter()
    if not args.tracing:
        log("--no-tracing: spans are no-ops; a diagnostic run, not the fleet's configuration")
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        log(f"nats-server at {server.url}; starting server processes")
        servers = {kind: ServerProcess(kind, server.url, args.max_concurrency, args.tracing, args.loop)
                   for kind in ("ours", "raw")}
        try:
            for proc in servers.values():
                proc.wait_ready()
            pids = {"ours": servers["ours"].process.pid, "raw": servers["raw"].process.pid, "nats": server.pid}
            report = run_on(args.loop, run_client(
                args, server.url, servers["ours"].grpc_port, servers["raw"].grpc_port, pids, servers))
        finally:
            for proc in servers.values():
                proc.stop()
    report["targets"] = {key: f"{op} {bound}" for key, (op, bound) in TARGETS.items()}
    report["targets_met"] = {key: met(report["ratios"][key], op, bound) for key, (op, bound) in TARGETS.items()}
    output = {
        "bench": "rpc",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "config": {key: getattr(args, key) for key in
                   ("payload", "latency_calls", "duration", "concurrency", "rounds", "warmup", "quick", "tracing",
                    "loop", "profile")},
        **report,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print_table(output)
    missed = [key for key, ok in output["targets_met"].items() if not ok]
    log(f"targets missed: {', '.join(missed)}" if missed else "all targets met")
    print(json.dumps(output, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
