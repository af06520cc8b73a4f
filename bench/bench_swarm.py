"""Swarm: investigation wall time and coordination overhead per mode, and throughput with one swarm
replica vs two, on the demo world with the real fleet (`bev up`, SmolLM2 on llama.cpp, MiniLM,
PostgreSQL, FalkorDB, NATS, OpenBao), all in one run.

(a) modes: one fleet, pointed at the demo world (DemoWorld, on loopback) by configuration alone,
    investigates the world's target once per mode (hierarchical, democratic, hybrid, autonomous).
    Each investigation collects for itself; the world and the fleet's stores are shared.
    wall = the investigation's started_at -> finished_at (the swarm's own clock, the same as its
    events'). "In tools" = the UNION of the [tool_call.at, tool_result.at] intervals of its events
    (calls run in parallel, so summing them would count the same second several times); the
    baseline is that union, and coordination overhead = wall - union (planning, DBOS steps, event
    and store writes, deliberation bookkeeping). Target: overhead / wall < 0.10. Also the share
    of wall inside model calls (reasoning.*), collector calls (collectors.*) and search
    (embeddings.*), each a union of its own intervals.
(b) throughput: N hierarchical investigations started at once, timed from the first created_at
    to the last finished_at, with the fleet's one swarm replica; then a second replica (a second
    `python -m services.swarm` process, the first one's environment with a fresh Vault secret id
    and free ports) joins the same DBOS queue in PostgreSQL and the N are run again. Reported as
    investigations per minute each way and their ratio (two / one). Each replica runs at most
    `swarm.concurrency` investigations at once (default 2), so N must exceed it for a second
    replica to get any: the default is N = 4 at concurrency 2; --quick runs N = 2 at concurrency 1
    (BEV_SWARM__CONCURRENCY, set for the whole fleet; (a) runs one investigation at a time anyway).
(c) the model floor, per mode in (a): the reasoning replicas' `bev_reasoning_backend_busy_seconds_total`
    (wall time with a request at the engine) read before and after the investigation. llama.cpp
    serves one request at a time, so that is the model's compute time: no schedule of the same
    calls can finish sooner. Reported as wall / floor, with wall split into
    engine (the floor) + in a model call but not at the engine (router queue, RPC, Analyze's
    pre-selection and parsing) + in other tools only (collectors, search) + coordination.

    .venv/bin/python bench/bench_swarm.py           # 4 modes + 2 x 4 investigations: ~25 min idle (estimate)
    .venv/bin/python bench/bench_swarm.py --quick   # hierarchical once + 2 x 2: ~8 min idle, ~25 min
                                                    # with another fleet's tests on the same 2 cores
Each phase records the 1-minute load average around it and how many other `bev up` fleets were
running (`noise`): on 2 shared cores those move the figures far more than anything measured here.
The last stdout line is one JSON object; progress and the table go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import httpx
import nats
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bev.engines import new_secret_id
from bev.fleet import discover
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmClient
from services.swarm.demo.investigate import MODES, investigate, start_fleet
from services.swarm.demo.server import DemoWorld
from services.swarm.settings import SwarmConfig

REPO = Path(__file__).resolve().parents[1]
OVERHEAD_TARGET = 0.10
REPLICA_UP_TIMEOUT_S = 120
Interval = tuple[float, float]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _seconds(stamp: Any) -> float:
    return float(stamp.ToDatetime(tzinfo=dt.UTC).timestamp())


def union_s(intervals: list[Interval]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def largest_gap_s(intervals: list[Interval], start: float, end: float) -> float:
    """The longest stretch of [start, end] with no interval open: no tool or model call in flight."""
    gap, reached = 0.0, start
    for began, stopped in sorted(intervals):
        gap = max(gap, began - reached)
        reached = max(reached, stopped)
    return max(gap, end - reached)


def tool_intervals(events: list[swarm_pb2.InvestigationEvent], finished: float) -> dict[str, list[Interval]]:
    """tool -> [tool_call.at, tool_result.at] intervals, paired by key (a call re-run after an error
    gets a second tool_call with the same key: pairs are taken in order). A call with no result
    (cancelled, budget) runs until the investigation finished."""
    opened: dict[str, list[tuple[str, float]]] = {}
    out: dict[str, list[Interval]] = {}
    for event in events:
        if event.kind not in ("tool_call", "tool_result"):
            continue
        data = json.loads(event.data_json)
        at = _seconds(event.at)
        if event.kind == "tool_call":
            opened.setdefault(data["key"], []).append((data["tool"], at))
        elif opened.get(data["key"]):
            tool, began = opened[data["key"]].pop(0)
            out.setdefault(tool, []).append((began, at))
    for calls in opened.values():
        for tool, began in calls:
            out.setdefault(tool, []).append((began, max(began, finished)))
    return out


def analyse(final: swarm_pb2.Investigation, events: list[swarm_pb2.InvestigationEvent]) -> dict[str, Any]:
    started, finished = _seconds(final.started_at), _seconds(final.finished_at)
    wall = max(finished - started, 1e-9)
    by_tool = tool_intervals(events, finished)
    every = [i for intervals in by_tool.values() for i in intervals]

    def family(prefix: str) -> list[Interval]:
        return [i for tool, intervals in by_tool.items() if tool.startswith(prefix) for i in intervals]

    in_tools = union_s(every)
    per_tool: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.kind == "tool_result":
            data = json.loads(event.data_json)
            row = per_tool.setdefault(data["tool"], {"n": 0, "sum_s": 0.0, "max_s": 0.0, "errors": 0})
            row["n"] += 1
            row["sum_s"] = round(row["sum_s"] + data.get("ms", 0) / 1000, 2)
            row["max_s"] = max(row["max_s"], round(data.get("ms", 0) / 1000, 2))
            row["errors"] += data.get("status") == "error"
            if data.get("status") == "error" and "first_error" not in row:
                row["first_error"] = str(data.get("error", ""))[:300]
    # Phases, from their events: how long each lasted, and for ingestion (collectors only, no model)
    # how much of it had no call in flight (round barriers, DBOS steps, store writes).
    marks = [(json.loads(e.data_json)["phase"], _seconds(e.at)) for e in events if e.kind == "phase"]
    bounds = [*marks, ("end", finished)]
    phases_s: dict[str, float] = {}
    for (name, began), (_, ended) in itertools.pairwise(bounds):
        phases_s[name] = round(phases_s.get(name, 0.0) + ended - began, 2)
    ingestion = next(((b, e) for (n, b), (_, e) in itertools.pairwise(bounds) if n == "ingestion"), None)
    ingestion_idle = None
    if ingestion:
        inside = [(max(a, ingestion[0]), min(b, ingestion[1])) for a, b in every if b > ingestion[0] and a < ingestion[1]]
        ingestion_idle = round(ingestion[1] - ingestion[0] - union_s(inside), 2)
    return {
        "status": swarm_pb2.Status.Name(final.status).removeprefix("STATUS_").lower(),
        "phases_s": phases_s,
        "ingestion_idle_s": ingestion_idle,
        "wall_s": round(wall, 2),
        "queued_s": round(started - _seconds(final.created_at), 2),
        "in_tools_s": round(in_tools, 2),
        "tool_seconds_summed": round(sum(b - a for a, b in every), 2),
        "overhead_s": round(wall - in_tools, 2),
        "overhead_ratio": round((wall - in_tools) / wall, 4),
        "largest_gap_s": round(largest_gap_s(every, started, finished), 2),
        "in_model_s": round(union_s(family("reasoning.")), 2),
        "model_share": round(union_s(family("reasoning.")) / wall, 4),
        "collector_share": round(union_s(family("collectors.")) / wall, 4),
        "search_share": round(union_s(family("embeddings.")) / wall, 4),
        "calls": dict(sorted(Counter({tool: len(intervals) for tool, intervals in by_tool.items()}).items())),
        "tools": dict(sorted(per_tool.items())),
        "tokens": final.usage.tokens,
    }


async def engine_busy_s(creds: dict[str, Any]) -> float:
    """Seconds the reasoning replicas' engines have had work, summed over backends, read off their
    /metrics (bev_reasoning_backend_busy_seconds_total)."""
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"])
    try:
        addresses = [i.metrics_address for i in await discover(nc, 1.0) if i.service == "reasoning" and i.metrics_address]
    finally:
        await nc.close()
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for address in addresses:
            text = (await http.get(f"http://{address}/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name == "bev_reasoning_backend_busy_seconds":
                    total += sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return total


def floor_split(result: dict[str, Any], engine_s: float) -> dict[str, Any]:
    """wall = engine (the model floor) + in a model call off the engine + other tools only + coordination."""
    wall, in_model, in_tools = result["wall_s"], result["in_model_s"], result["in_tools_s"]
    return {
        "engine_s": round(engine_s, 2),
        "wall_over_floor": round(wall / engine_s, 3) if engine_s else None,
        "split_s": {
            "engine": round(engine_s, 2),
            "model_call_off_engine": round(max(in_model - engine_s, 0.0), 2),
            "other_tools_only": round(in_tools - in_model, 2),
            "coordination": round(wall - in_tools, 2),
        },
    }


async def run_mode(creds: dict[str, Any], world: DemoWorld, mode: str) -> dict[str, Any]:
    events: list[swarm_pb2.InvestigationEvent] = []

    def keep(event: swarm_pb2.InvestigationEvent) -> None:
        events.append(event)
        if event.kind in ("phase", "mode_switch", "done"):
            data = json.loads(event.data_json)
            say(f"  {mode}: {event.kind} {json.dumps(data)[:100]}")

    busy_before = await engine_busy_s(creds)
    began = time.monotonic()
    final, recall = await investigate(creds, world, mode, on_event=keep)
    result = analyse(final, events)
    result["model_floor"] = floor_split(result, await engine_busy_s(creds) - busy_before)
    result["client_wall_s"] = round(time.monotonic() - began, 2)
    result["recall"] = [round(recall.entities, 3), round(recall.relations, 3)]
    return result


async def run_batch(creds: dict[str, Any], world: DemoWorld, n: int) -> dict[str, Any]:
    """n hierarchical investigations at once; until the last is done."""
    seen: dict[str, str] = {}  # investigation -> the replica its agents run on (rows go when it ends)
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"])

    async def watch_agents() -> None:
        swarm = SwarmClient.over_nats(nc)
        while True:
            try:
                for agent in (await swarm.ListAgents(swarm_pb2.ListAgentsRequest())).agents:
                    if agent.instance:
                        seen.setdefault(agent.investigation_id, agent.instance)
            except Exception as exc:  # a slow answer under load: ask again
                say(f"  ListAgents: {exc}")
            await asyncio.sleep(1)

    watcher = asyncio.create_task(watch_agents())
    try:
        streams: list[list[swarm_pb2.InvestigationEvent]] = [[] for _ in range(n)]
        began = time.monotonic()
        finals = await asyncio.gather(*(investigate(creds, world, "hierarchical", on_event=stream.append)
                                        for stream in streams))
        client_s = time.monotonic() - began
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await nc.close()
    invs = [final for final, _ in finals]
    span = max(_seconds(i.finished_at) for i in invs) - min(_seconds(i.created_at) for i in invs)
    ran_on = Counter(seen.get(i.id, "?") for i in invs)
    statuses = Counter(swarm_pb2.Status.Name(i.status).removeprefix("STATUS_").lower() for i in invs)
    return {"investigations": n, "seconds": round(span, 2), "client_seconds": round(client_s, 2),
            "per_minute": round(60 * n / span, 3), "walls_s": sorted(round(_seconds(i.finished_at) - _seconds(i.started_at), 1) for i in invs),
            "queued_s": sorted(round(_seconds(i.started_at) - _seconds(i.created_at), 1) for i in invs),
            "statuses": dict(statuses), "by_replica": dict(ran_on),
            "model_s_summed": sorted(round(sum(t["sum_s"] for name, t in analyse(i, events)["tools"].items()
                                               if name.startswith("reasoning.")), 1)
                                     for i, events in zip(invs, streams, strict=True)),
            "recall": sorted([round(r.entities, 3), round(r.relations, 3)] for _, r in finals)}


async def swarm_instances(creds: dict[str, Any]) -> list[str]:
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"])
    try:
        return [i.instance for i in await discover(nc, 1.0) if i.service == "swarm" and i.state == "serving"]
    finally:
        await nc.close()


def other_fleets(own_pid: int) -> int:
    """`bev up` processes other than ours (tests starting fleets): they share these cores."""
    count = 0
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["pid"] != own_pid and any(Path(a).name == "bev" for a in cmdline[:2]) and "up" in cmdline[1:3]:
            count += 1
    return count


async def measured(phase: Any, own_pid: int) -> dict[str, Any]:
    """The phase's result, with the machine's load around it (the 1-minute load average at its start
    and end, and the most other fleets seen), to read its figures against."""
    before = os.getloadavg()[0], other_fleets(own_pid)
    result: dict[str, Any] = await phase
    after = os.getloadavg()[0], other_fleets(own_pid)
    result["noise"] = {"load_1m": [round(before[0], 2), round(after[0], 2)], "other_fleets": max(before[1], after[1])}
    return result


def swarm_process(fleet_pid: int) -> psutil.Process:
    for child in psutil.Process(fleet_pid).children(recursive=True):
        try:
            if child.cmdline()[1:] == ["-m", "services.swarm"]:
                return child
        except psutil.Error:
            continue
    raise SystemExit("no `python -m services.swarm` among the fleet's processes")


def start_replica(fleet_pid: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """A second swarm replica: the running one's environment, a fresh secret id, free ports."""
    first = swarm_process(fleet_pid)
    env = dict(line.split("=", 1) for line in Path(f"/proc/{first.pid}/environ").read_text().split("\0") if "=" in line)
    vault = json.loads((data_dir / "run" / "fleet.json").read_text())["vault"]
    env["BEV_VAULT__SECRET_ID"] = new_secret_id(vault["addr"], vault["root_token"], "swarm")
    env["BEV_RPC__GRPC_PORT"] = "0"  # the first replica holds its ports; 0 = pick a free one
    env["BEV_TELEMETRY__METRICS_PORT"] = "0"
    with (data_dir / "logs" / "swarm-replica-2.log").open("wb") as log:
        return subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "-m", "services.swarm"], env=env,
                                cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen[bytes], signum: signal.Signals, timeout_s: float) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def bench(args: argparse.Namespace, world: DemoWorld, data_dir: Path, fleet: subprocess.Popen[bytes]) -> dict[str, Any]:
    creds = json.loads((data_dir / "run" / "fleet.json").read_text())["nats"]
    results: dict[str, Any] = {"modes": {}}
    for mode in args.modes:
        say(f"investigating the demo target, mode {mode} ...")
        results["modes"][mode] = outcome = await measured(run_mode(creds, world, mode), fleet.pid)
        say(f"{mode}: {outcome['status']} in {outcome['wall_s']} s, overhead {outcome['overhead_s']} s "
            f"({outcome['overhead_ratio']:.3f}), model {outcome['model_share']:.2f} of wall, recall {outcome['recall']}, "
            f"noise {outcome['noise']}")
    if args.parallel:
        say(f"throughput: {args.parallel} hierarchical investigations at once, one swarm replica ...")
        results["one_replica"] = await measured(run_batch(creds, world, args.parallel), fleet.pid)
        say(f"one replica: {results['one_replica']['seconds']} s, {results['one_replica']['per_minute']}/min")
        say("starting a second swarm replica ...")
        replica = start_replica(fleet.pid, data_dir)
        try:
            deadline = time.monotonic() + REPLICA_UP_TIMEOUT_S
            while len(instances := await swarm_instances(creds)) < 2:
                if replica.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the second swarm replica did not come up; see {data_dir / 'logs'}")
                await asyncio.sleep(1)
            say(f"swarm replicas serving: {', '.join(instances)}")
            say(f"throughput: {args.parallel} hierarchical investigations at once, two swarm replicas ...")
            results["two_replicas"] = await measured(run_batch(creds, world, args.parallel), fleet.pid)
            say(f"two replicas: {results['two_replicas']['seconds']} s, {results['two_replicas']['per_minute']}/min, "
                f"ran on {results['two_replicas']['by_replica']}")
        finally:
            stop(replica, signal.SIGTERM, 60)
    return results


def summary(results: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    modes = results["modes"]
    out: dict[str, Any] = {
        "bench": "swarm", "date": dt.date.today().isoformat(), "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "config": {"modes": args.modes, "parallel": args.parallel, "swarm_concurrency": args.concurrency},
        "wall_s": {m: r["wall_s"] for m, r in modes.items()},
        "overhead_s": {m: r["overhead_s"] for m, r in modes.items()},
        "overhead_ratio": {m: r["overhead_ratio"] for m, r in modes.items()},
        "model_share": {m: r["model_share"] for m, r in modes.items()},
        "collector_share": {m: r["collector_share"] for m, r in modes.items()},
        "wall_over_model_floor": {m: r["model_floor"]["wall_over_floor"] for m, r in modes.items()},
        "recall": {m: r["recall"] for m, r in modes.items()},
        "status": {m: r["status"] for m, r in modes.items()},
        "modes": modes,
    }
    if "two_replicas" in results:
        one, two = results["one_replica"]["per_minute"], results["two_replicas"]["per_minute"]
        out.update({"per_minute_1_replica": one, "per_minute_2_replicas": two, "replica_speedup": round(two / one, 3),
                    "throughput": {"one_replica": results["one_replica"], "two_replicas": results["two_replicas"]}})
    out["targets"] = {"overhead_ratio": f"< {OVERHEAD_TARGET}"}
    out["targets_met"] = {f"overhead_ratio_{m}": r["overhead_ratio"] < OVERHEAD_TARGET for m, r in modes.items()}
    out["bench_s"] = round(seconds, 1)
    return out


def table(out: dict[str, Any]) -> None:
    print(f"\n{'mode':<13} {'status':<10} {'wall s':>7} {'overhead s':>10} {'ratio':>6} {'model':>6} {'collect':>7} "
          f"{'search':>6} {'calls':>5} {'recall (e, r)':>14}", file=sys.stderr)
    for mode, r in out["modes"].items():
        print(f"{mode:<13} {r['status']:<10} {r['wall_s']:>7.1f} {r['overhead_s']:>10.2f} {r['overhead_ratio']:>6.3f} "
              f"{r['model_share']:>6.2f} {r['collector_share']:>7.2f} {r['search_share']:>6.2f} "
              f"{sum(r['calls'].values()):>5} {r['recall']!s:>14}", file=sys.stderr)
    for mode, r in out["modes"].items():
        floor = r["model_floor"]
        print(f"{mode}: wall / model floor = {floor['wall_over_floor']}; wall split (s) {floor['split_s']}; "
              f"phases (s) {r['phases_s']}, ingestion with nothing in flight {r['ingestion_idle_s']} s", file=sys.stderr)
    if "throughput" in out:
        for name, t in out["throughput"].items():
            print(f"{name}: {t['investigations']} at once in {t['seconds']} s = {t['per_minute']}/min "
                  f"(walls {t['walls_s']}, queued {t['queued_s']}, model s {t['model_s_summed']}, ran on {t['by_replica']}, "
                  f"noise {t['noise']})", file=sys.stderr)
        print(f"two replicas / one: {out['replica_speedup']}", file=sys.stderr)
    print("targets: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in out["targets_met"].items()),
          file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="hierarchical once; throughput with 2 at once at concurrency 1 per replica")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=None,
                        help="modes to time (default: all four; --quick: hierarchical)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="investigations started at once for throughput (default 4; --quick 2; 0 skips it)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="investigations each swarm replica runs at once (default: the service's, "
                             f"{SwarmConfig().concurrency}; --quick 1)")
    args = parser.parse_args()
    if args.modes is None:
        args.modes = ["hierarchical"] if args.quick else ["hierarchical", "democratic", "hybrid", "autonomous"]
    if args.parallel is None:
        args.parallel = 2 if args.quick else 4
    if args.concurrency is None:
        args.concurrency = 1 if args.quick else SwarmConfig().concurrency
    # The fleet's swarm (and so the second replica, which copies its environment) reads this.
    os.environ["BEV_SWARM__CONCURRENCY"] = str(args.concurrency)
    if args.parallel and args.parallel <= args.concurrency:
        say(f"note: {args.parallel} at once fit in one replica (concurrency {args.concurrency}); "
            "a second replica will get none of them")
    began = time.monotonic()
    with DemoWorld() as world, tempfile.TemporaryDirectory(prefix="bev-bench-swarm-") as scratch:
        data_dir = Path(scratch)
        say(f"starting the fleet on the demo world (log: {data_dir / 'up.log'}) ...")
        fleet = start_fleet(world, data_dir, data_dir / "up.log")
        say(f"fleet up in {time.monotonic() - began:.0f} s")
        try:
            results = asyncio.run(bench(args, world, data_dir, fleet))
        finally:
            stop(fleet, signal.SIGINT, 90)
        outside = len(world.outside())
    out = summary(results, args, time.monotonic() - began)
    out["requests_outside_scope"] = outside
    table(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
