"""Scale-out figures (issue C7): the one-machine fleet against the three-node lab, in one run, and
how long the lab takes to notice a lost node and route around it.

Starts both fleets and keeps them up side by side, so their measurements can be interleaved:
- one-machine: `bev up --free-ports` (the whole fleet, one plain NATS server, no TLS);
- lab: `bev.lab.Lab` (THANOS, STARLORD, ORACLE1 as network namespaces on this machine, each running
  its share of the manifest; NATS a 3-node cluster over TLS with client certificates, JetStream R3).
Both are timed from launch to healthy ("fleet up in"). Then, from this process (outside every
namespace), in interleaved rounds whose order rotates (each target first, second and third equally
often), for three targets:
- one_machine:  the one-machine fleet's NATS server;
- via_oracle1:  ORACLE1's NATS server: every call crosses a cluster route to THANOS (embeddings);
- via_thanos:   THANOS's NATS server, next to the embeddings service (TLS, no route);
the bench measures
- embeddings throughput: --embed-callers callers sending Embed calls of 32 short sentences (new
  ones each call), in sentences/s, and the embeddings process's CPU per sentence;
- RPC round trip: embeddings Health (one replica, on THANOS in the lab) one call at a time, p50 and
  p99; and calls/s with --rpc-callers concurrent callers, with the CPU per call of this client, the
  embeddings process and the fleet's nats-servers (all three in the lab).
Ratios are lab / one-machine. Then the lost node: STARLORD's link is cut (`network.cut`) and, all at
once from the cut, the bench times
- reasoning's Health answering 20 calls in a row (1 s timeout, the client's own retry included)
  through THANOS's server and through ORACLE1's; and 20 first attempts in a row answered by the
  queue group with no retry (whether NATS still hands calls to STARLORD's replica);
- THANOS's and ORACLE1's /routez no longer listing starlord;
- `discover` (what `bev status` and monitoring use) over THANOS's server listing no STARLORD
  instance;
- the event stream (BEV_EVENTS, R3) answering with a leader other than STARLORD;
then restores the link and times routez and discover listing STARLORD again, and JetStream settling
(a metadata leader, the stream led with both other replicas current). A wait that runs past
--lost-timeout is reported as null. Both fleets are taken down on every exit path.

Needs root (ip netns). Both fleets share this machine's cores: the lab's ratio is the cost of TLS,
cluster routes and namespaces, not of more hardware.

    .venv/bin/python bench/bench_scale_out.py          # ~5 min on 2 shared cores (6.5 when loaded)
    .venv/bin/python bench/bench_scale_out.py --quick  # ~3.5 min
The last stdout line is one JSON object; the table goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats.errors

from bev.bus import connect_nats
from bev.lab import Lab, LabError
from bev.manifest import load_manifest
from bev.settings import NatsSettings

PREFIX, SUBNET = "bevbench", "10.214.0.0/24"  # never the lab tests' (bevlab, 10.213.0.0/24)
LOST = "starlord"
BATCH = 32
STREAM = "BEV_EVENTS"  # the fleet's event stream, R3 across the three NATS servers
STREAK = 20  # answers in a row that count as "routed around"
CALL_TIMEOUT_S = 1.0
START_TIMEOUT_S = 300.0
ACTORS = ["APT28", "Lazarus", "Sandworm", "FIN7", "Kimsuky", "Turla", "Volt Typhoon", "Scattered Spider"]
VERBS = ["phished", "breached", "scanned", "extorted", "impersonated", "backdoored", "wiped", "probed"]
OBJECTS = ["a hospital", "a ministry", "an exchange", "a utility", "a telecom", "a think tank", "a retailer"]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def sentences(start: int, n: int) -> list[str]:
    """n short, distinct sentences (numbered from start, so no two calls send the same text)."""
    return [f"{ACTORS[i % 8]} {VERBS[i // 8 % 8]} {OBJECTS[i // 64 % 7]} from host h{i}.example in campaign {i}."
            for i in range(start, start + n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and its running descendants (a whole fleet)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended while listing
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return cpu_seconds(list(tree))


# -- the two fleets -------------------------------------------------------------------------------

def start_one_machine(data_dir: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True)
    with (data_dir / "up.log").open("wb") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "bev"), "up", "--free-ports", "--data-dir",
                                 str(data_dir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def wait_one_machine(process: subprocess.Popen[bytes], data_dir: Path) -> dict[str, Any]:
    output = data_dir / "up.log"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace")
        if "fleet up in" in text:
            fleet: dict[str, Any] = json.loads((data_dir / "run" / "fleet.json").read_text())
            return fleet
        if process.poll() is not None:
            raise RuntimeError(f"bev up exited with {process.returncode}: {text[-2000:]}")
        time.sleep(0.25)
    raise RuntimeError(f"the one-machine fleet was not up within {START_TIMEOUT_S:.0f}s (log {output})")


def stop_one_machine(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # as Ctrl-C: the supervisor stops its services and engines
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def log_lab_tails(lab: Lab) -> None:
    for node in lab.nodes:
        path = lab.log_path(node)
        tail = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else ["(no log)"]
        log("\n".join([f"--- {path} (last lines)", *tail]))


# -- throughput and round trips ------------------------------------------------------------------

class Target:
    """One way into a fleet: a NATS connection and the clients over it."""

    def __init__(self, name: str, settings: NatsSettings, embeddings_pid: int, nats_pids: list[int]) -> None:
        self.name, self.settings = name, settings
        self.embeddings_pid, self.nats_pids = embeddings_pid, nats_pids
        self.embed_cpu_s = 0.0  # the embeddings process, over the Embed phases
        self.rpc_cpu_s = {"client": 0.0, "service": 0.0, "nats": 0.0}  # over the Health throughput phases
        self.sentences: list[int] = []  # per round
        self.embed_s: list[float] = []
        self.latencies_us: list[float] = []
        self.round_p50_us: list[float] = []
        self.calls: list[int] = []
        self.rpc_s: list[float] = []

    async def connect(self) -> None:
        from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient

        self.nc = await connect_nats(self.settings, "bench-scale-out")
        self.embeddings = EmbeddingsClient.over_nats(self.nc)

    def cpu(self) -> dict[str, float]:
        return {"client": time.process_time(), "service": cpu_seconds([self.embeddings_pid]),
                "nats": cpu_seconds(self.nats_pids)}

    def summary(self) -> dict[str, float]:
        calls = sum(self.calls)
        return {
            "embed_sentences_per_s": round(sum(self.sentences) / sum(self.embed_s), 1),
            "embed_service_cpu_ms_per_sentence": round(self.embed_cpu_s / sum(self.sentences) * 1000, 2),
            "health_p50_ms": round(percentile(self.latencies_us, 0.5) / 1000, 3),
            "health_p99_ms": round(percentile(self.latencies_us, 0.99) / 1000, 3),
            "health_calls_per_s": round(calls / sum(self.rpc_s), 1),
            **{f"health_{side}_cpu_us_per_call": round(seconds / calls * 1e6, 1)
               for side, seconds in self.rpc_cpu_s.items()},
        }


async def loop_for(call: Callable[[], Awaitable[int]], callers: int, seconds: float) -> tuple[int, float]:
    """(units done, seconds) with `callers` callers looping until the time is up (the last calls finish)."""
    stop_at = time.perf_counter() + seconds
    done = [0] * callers

    async def caller(slot: int) -> None:
        while time.perf_counter() < stop_at:
            done[slot] += await call()

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return sum(done), time.perf_counter() - began


async def measure(args: argparse.Namespace, targets: list[Target]) -> None:
    from bev.common.v1 import common_pb2
    from bev.embeddings.v1 import embeddings_pb2

    counter = iter(range(0, 1 << 40, BATCH))
    health = common_pb2.HealthRequest()

    def embed_call(target: Target) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            response = await target.embeddings.Embed(embeddings_pb2.EmbedRequest(texts=sentences(next(counter), BATCH)),
                                                     timeout_s=60)
            assert len(response.vectors) == BATCH
            return BATCH
        return call

    def health_call(target: Target) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            answer = await target.embeddings.Health(health, timeout_s=10)
            assert answer.status == common_pb2.HealthResponse.STATUS_SERVING, answer
            return 1
        return call

    for target in targets:
        await target.connect()
        await loop_for(embed_call(target), args.embed_callers, 1.0)  # warm: connections, first batches
        await loop_for(health_call(target), args.rpc_callers, 0.5)
    embed_s, rpc_s = args.embed_seconds / args.rounds, args.rpc_seconds / args.rounds
    latency_calls = args.latency_calls // args.rounds
    for round_no in range(args.rounds):
        # The order rotates, so each target is measured first, second and third equally often.
        order = targets[round_no % 3:] + targets[:round_no % 3]
        for target in order:
            call = embed_call(target)
            await asyncio.gather(*(call() for _ in range(args.embed_callers)))  # untimed: the model warm again
            before = cpu_seconds([target.embeddings_pid])
            done, seconds = await loop_for(call, args.embed_callers, embed_s)
            target.embed_cpu_s += cpu_seconds([target.embeddings_pid]) - before
            target.sentences.append(done)
            target.embed_s.append(seconds)
        # Latency in blocks of 25 calls taken in turn, so a noisy moment hits every target alike.
        samples: dict[str, list[float]] = {t.name: [] for t in targets}
        for _ in range(0, latency_calls, 25):
            for target in order:
                call = health_call(target)
                for _ in range(25):
                    began = time.perf_counter_ns()
                    await call()
                    samples[target.name].append((time.perf_counter_ns() - began) / 1000)
        for target in order:
            target.latencies_us += samples[target.name]
            target.round_p50_us.append(statistics.median(samples[target.name]))
            before_cpu = target.cpu()
            done, seconds = await loop_for(health_call(target), args.rpc_callers, rpc_s)
            for side, value in target.cpu().items():
                target.rpc_cpu_s[side] += value - before_cpu[side]
            target.calls.append(done)
            target.rpc_s.append(seconds)
        log(f"round {round_no + 1}/{args.rounds}: " + "; ".join(
            f"{t.name} {t.sentences[-1] / t.embed_s[-1]:.0f} sent/s, p50 {t.round_p50_us[-1] / 1000:.2f} ms, "
            f"{t.calls[-1] / t.rpc_s[-1]:.0f} calls/s" for t in targets))
    for target in targets:
        await target.nc.close()


# -- the lost node -------------------------------------------------------------------------------

async def lost_node(lab: Lab, timeout_s: float) -> dict[str, Any]:
    from bev.common.v1 import common_pb2
    from bev.fleet import discover
    from bev.reasoning.v1.reasoning_rpc import ReasoningClient
    from bev.rpc.errors import RpcError
    from bev.rpc.nats_transport import NatsTransport

    settings = {node: NatsSettings.model_validate(lab.fleet(node)["nats"]) for node in ("thanos", "oracle1")}
    nc = {node: await connect_nats(s, "bench-scale-out") for node, s in settings.items()}
    http = httpx.AsyncClient(trust_env=False, timeout=2)
    health = common_pb2.HealthRequest().SerializeToString()
    health_method = ReasoningClient.SERVICE.methods["Health"]

    async def routes(node: str) -> set[str]:
        answer = await http.get(f"http://{lab.address(node)}:8222/routez")
        return {str(r.get("remote_name")) for r in answer.json().get("routes") or []}

    async def lost_instances() -> int:
        return sum(i.node == LOST for i in await discover(nc["thanos"], 1.0))

    js = nc["thanos"].jetstream(timeout=1.0)

    async def stream_leader() -> str:
        cluster = (await js.stream_info(STREAM)).cluster
        return str(cluster.leader or "") if cluster is not None else ""

    async def stream_led_without_lost() -> bool:
        return await stream_leader() not in ("", LOST)

    async def jetstream_settled() -> bool:
        """A metadata leader, and the event stream led with both other replicas current."""
        meta = (await http.get(f"http://{lab.address('thanos')}:8222/jsz")).json().get("meta_cluster") or {}
        cluster = (await js.stream_info(STREAM)).cluster
        return (bool(meta.get("leader")) and cluster is not None and bool(cluster.leader)
                and len(cluster.replicas or []) == 2 and all(r.current for r in cluster.replicas or []))

    async def until(since: float, condition: Callable[[], Awaitable[bool]], every_s: float = 0.25) -> float | None:
        """Seconds from `since` until condition() holds; None past the timeout."""
        while time.monotonic() - since < timeout_s:
            try:
                if await condition():
                    return round(time.monotonic() - since, 2)
            except (httpx.HTTPError, RpcError, OSError, TimeoutError, nats.errors.Error):
                pass  # a refused or unanswered poll is not the answer: poll again
            await asyncio.sleep(every_s)
        return None

    async def streak(since: float, node: str, retry: bool, tally: dict[str, int]) -> float | None:
        """Seconds until STREAK Health calls in a row are answered within CALL_TIMEOUT_S: with the
        client's own retry elsewhere (as every caller in the fleet), or first attempts only."""
        client, transport, run = ReasoningClient.over_nats(nc[node]), NatsTransport(nc[node]), 0
        while run < STREAK:
            if time.monotonic() - since > timeout_s:
                return None
            began = time.monotonic()
            try:
                if retry:
                    await client.Health(common_pb2.HealthRequest(), timeout_s=CALL_TIMEOUT_S)
                else:
                    await transport.unary(health_method, health, CALL_TIMEOUT_S, {})
                run += 1
                tally["slow"] += time.monotonic() - began > CALL_TIMEOUT_S / 2  # retried after a lost first try
            except RpcError:
                run, tally["failed"] = 0, tally["failed"] + 1
                await asyncio.sleep(0.05)  # "no responders" comes back at once: do not spin
            tally["calls"] += 1
        return round(time.monotonic() - since, 2)

    try:
        before = {node: await routes(node) for node in ("thanos", "oracle1")}
        if any(LOST not in r for r in before.values()) or not await lost_instances():
            raise RuntimeError(f"{LOST} was not in the cluster before the cut: routes {before}")
        leader_before = await stream_leader()
        tallies = {key: {"calls": 0, "failed": 0, "slow": 0} for key in
                   ("via_thanos", "via_oracle1", "first_try_via_thanos", "first_try_via_oracle1")}
        log(f"cutting {LOST}'s link; waiting up to {timeout_s:.0f}s for the fleet to notice")
        cut = time.monotonic()
        lab.network.cut(LOST)
        (answers_thanos, answers_oracle1, first_thanos, first_oracle1, routez_thanos, routez_oracle1,
         discover_gone, stream_led) = await asyncio.gather(
            streak(cut, "thanos", True, tallies["via_thanos"]),
            streak(cut, "oracle1", True, tallies["via_oracle1"]),
            streak(cut, "thanos", False, tallies["first_try_via_thanos"]),
            streak(cut, "oracle1", False, tallies["first_try_via_oracle1"]),
            until(cut, lambda: _without(routes("thanos"))),
            until(cut, lambda: _without(routes("oracle1"))),
            until(cut, lambda: _none(lost_instances())),
            until(cut, stream_led_without_lost),
        )
        log(f"restoring {LOST}'s link")
        restored = time.monotonic()
        lab.network.restore(LOST)
        routez_back, discover_back, settled = await asyncio.gather(
            until(restored, lambda: _with(routes("thanos"))),
            until(restored, lambda: _some(lost_instances())),
            until(restored, jetstream_settled),
        )
    finally:
        await http.aclose()
        for connection in nc.values():
            await connection.close()
    return {
        "reasoning_20_answers_via_thanos_s": answers_thanos,
        "reasoning_20_answers_via_oracle1_s": answers_oracle1,
        "reasoning_20_first_tries_via_thanos_s": first_thanos,
        "reasoning_20_first_tries_via_oracle1_s": first_oracle1,
        "routez_thanos_drops_lost_s": routez_thanos,
        "routez_oracle1_drops_lost_s": routez_oracle1,
        "discover_drops_lost_s": discover_gone,
        "event_stream_leader_before_cut": leader_before,
        "event_stream_led_without_lost_s": stream_led,
        "routez_thanos_lists_lost_again_s": routez_back,
        "discover_lists_lost_again_s": discover_back,
        "jetstream_settled_after_restore_s": settled,
        "calls_while_routing_around": tallies,
        "timeout_s": timeout_s,
    }


async def _without(names: Awaitable[set[str]]) -> bool:
    return LOST not in await names


async def _with(names: Awaitable[set[str]]) -> bool:
    return LOST in await names


async def _none(count: Awaitable[int]) -> bool:
    return await count == 0


async def _some(count: Awaitable[int]) -> bool:
    return await count > 0


# -- report ---------------------------------------------------------------------------------------

def ratios(results: dict[str, dict[str, float]]) -> dict[str, float]:
    base = results["one_machine"]
    out = {}
    for lab_target in ("via_oracle1", "via_thanos"):
        for name, key in (("embed", "embed_sentences_per_s"), ("embed_cpu", "embed_service_cpu_ms_per_sentence"),
                          ("p50", "health_p50_ms"), ("p99", "health_p99_ms"), ("calls_per_s", "health_calls_per_s")):
            out[f"{lab_target}_{name}_ratio"] = round(results[lab_target][key] / base[key], 3)
    return out


def per_round(targets: list[Target]) -> dict[str, list[float]]:
    """Lab / one-machine per round (both measured within seconds of each other)."""
    base, out = targets[0], {}
    for target in targets[1:]:
        out[f"{target.name}_embed"] = [round((s / e) / (bs / be), 3) for s, e, bs, be in zip(
            target.sentences, target.embed_s, base.sentences, base.embed_s, strict=True)]
        out[f"{target.name}_p50"] = [round(p / b, 3) for p, b in zip(target.round_p50_us, base.round_p50_us, strict=True)]
        out[f"{target.name}_calls_per_s"] = [round((c / t) / (bc / bt), 3) for c, t, bc, bt in zip(
            target.calls, target.rpc_s, base.calls, base.rpc_s, strict=True)]
    return out


def print_table(out: dict[str, Any]) -> None:
    log("")
    log(f"{'target':<13} {'embed sent/s':>13} {'cpu ms/sent':>12} {'health p50 ms':>14} {'p99 ms':>8} {'calls/s':>9}"
        f"   cpu us/call: {'client':>7} {'service':>8} {'nats':>6}")
    for name, row in out["results"].items():
        log(f"{name:<13} {row['embed_sentences_per_s']:>13.1f} {row['embed_service_cpu_ms_per_sentence']:>12.2f} "
            f"{row['health_p50_ms']:>14.2f} {row['health_p99_ms']:>8.2f} {row['health_calls_per_s']:>9.0f}"
            f"                {row['health_client_cpu_us_per_call']:>7.0f} {row['health_service_cpu_us_per_call']:>8.0f}"
            f" {row['health_nats_cpu_us_per_call']:>6.0f}")
    log("ratios (lab / one-machine): " + ", ".join(f"{k} {v}" for k, v in out["ratios"].items()))
    log("median of per-round ratios: " + ", ".join(f"{k} {v}" for k, v in out["ratios_median_of_rounds"].items()))
    log(f"start: one-machine {out['start']['one_machine_s']} s, lab {out['start']['lab_s']} s "
        f"(ratio {out['start']['lab_over_one_machine']})")
    lost = out.get("lost_node")
    if lost:
        for key, value in lost.items():
            if key.endswith("_s") and key != "timeout_s":
                log(f"{key:<40} {'not within ' + str(lost['timeout_s']) + ' s' if value is None else value}")
        log(f"event stream leader before the cut: {lost['event_stream_leader_before_cut']}")
        log(f"calls while routing around: {lost['calls_while_routing_around']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds, best a multiple of 3 (default 6)")
    parser.add_argument("--embed-seconds", type=float, default=24.0, help="Embed seconds per target (default 24)")
    parser.add_argument("--embed-callers", type=int, default=4, help="concurrent Embed callers (default 4)")
    parser.add_argument("--rpc-seconds", type=float, default=5.0, help="Health throughput seconds per target (default 5)")
    parser.add_argument("--rpc-callers", type=int, default=8, help="concurrent Health callers (default 8)")
    parser.add_argument("--latency-calls", type=int, default=400, help="sequential Health calls per target (default 400)")
    parser.add_argument("--lost-timeout", type=float, default=180.0,
                        help="seconds each lost-node wait may take before it is reported as null (default 180)")
    parser.add_argument("--quick", action="store_true", help="3 short rounds, 120 s lost-node waits")
    parser.add_argument("--keep", action="store_true", help="keep the fleets' data dirs and logs (removed otherwise)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.embed_seconds, args.rpc_seconds, args.latency_calls, args.lost_timeout = 3, 9.0, 3.0, 150, 120.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:  # `make bench` as a user runs the others and says why this one did not run
        log("bench_scale_out needs root: the lab's nodes are network namespaces (ip netns)")
        print(json.dumps({"bench": "scale_out", "skipped": "needs root (ip netns)"}))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still takes its fleets down
    began = time.monotonic()
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    lab = Lab(load_manifest(), root / "lab", prefix=PREFIX, subnet=SUBNET)
    one_machine: subprocess.Popen[bytes] | None = None
    finished = False
    out: dict[str, Any] = {"bench": "scale_out", "date": dt.date.today().isoformat(),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    try:
        log(f"starting the one-machine fleet (log {root / 'one' / 'up.log'})")
        started = time.monotonic()
        one_machine = start_one_machine(root / "one")
        fleet = wait_one_machine(one_machine, root / "one")
        one_machine_s = time.monotonic() - started
        log(f"one-machine fleet up in {one_machine_s:.1f}s; starting the lab (logs {lab.root}/<node>.log)")
        idle_cpu = tree_cpu_seconds(one_machine.pid)
        started = time.monotonic()
        try:
            lab.prepare()
            lab.start()
        except LabError:
            log_lab_tails(lab)
            raise
        lab_s = time.monotonic() - started
        idle_cpu = tree_cpu_seconds(one_machine.pid) - idle_cpu
        log(f"lab up in {lab_s:.1f}s (the idle one-machine fleet used {idle_cpu / lab_s:.0%} of a core meanwhile)")
        out["start"] = {"one_machine_s": round(one_machine_s, 1), "lab_s": round(lab_s, 1),
                        "lab_over_one_machine": round(lab_s / one_machine_s, 2),
                        "one_machine_idle_core_share_during_lab_start": round(idle_cpu / lab_s, 3)}
        thanos = lab.fleet("thanos")
        lab_nats = [int(lab.fleet(node)["engines"]["nats"]["pid"]) for node in lab.nodes]
        lab_embeddings = int(thanos["services"]["embeddings"]["pid"])
        targets = [Target("one_machine", NatsSettings.model_validate(fleet["nats"]),
                          int(fleet["services"]["embeddings"]["pid"]), [int(fleet["engines"]["nats"]["pid"])]),
                   Target("via_oracle1", NatsSettings.model_validate(lab.fleet("oracle1")["nats"]), lab_embeddings,
                          lab_nats),
                   Target("via_thanos", NatsSettings.model_validate(thanos["nats"]), lab_embeddings, lab_nats)]
        asyncio.run(measure(args, targets))
        out["config"] = {key: getattr(args, key) for key in ("rounds", "embed_seconds", "embed_callers", "rpc_seconds",
                                                             "rpc_callers", "latency_calls", "quick")}
        out["config"]["embed_batch"] = BATCH
        out["results"] = {t.name: t.summary() for t in targets}
        out["ratios"] = ratios(out["results"])
        out["ratios_per_round"] = per_round(targets)
        out["ratios_median_of_rounds"] = {key: round(statistics.median(values), 3)
                                          for key, values in out["ratios_per_round"].items()}
        out["lost_node"] = asyncio.run(lost_node(lab, args.lost_timeout))
        finished = True
    finally:
        log("taking both fleets down")
        try:
            lab.down()
        finally:
            if one_machine is not None:
                stop_one_machine(one_machine)
    if args.keep or not finished:
        log(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)  # only after a full run: a failed one keeps its logs
    out["load_average"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    out["wall_s"] = round(time.monotonic() - began, 1)
    print_table(out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
