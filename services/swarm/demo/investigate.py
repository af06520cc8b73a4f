"""`make demo` (`python -m services.swarm.demo.investigate`): serve the demo world, start the fleet
pointed at it (configuration only: BEV_COLLECTORS__... settings), investigate the world's target,
print the report, and score its entities and relations against the world's ground truth.

With --data-dir DIR of a fleet that already runs (`bev up` with the world's settings), it uses that
fleet instead of starting one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmClient
from services.swarm.demo.server import DemoWorld
from services.swarm.demo.world import Recall

MODES = {"hierarchical": swarm_pb2.MODE_HIERARCHICAL, "democratic": swarm_pb2.MODE_DEMOCRATIC,
         "hybrid": swarm_pb2.MODE_HYBRID, "autonomous": swarm_pb2.MODE_AUTONOMOUS}
START_TIMEOUT_S = 240


def start_fleet(world: DemoWorld, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    bev = Path(sys.executable).parent / "bev"
    with log.open("wb") as out:
        process = subprocess.Popen([str(bev), "up", "--data-dir", str(data_dir), "--free-ports"], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **world.collectors_env()})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bev up exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if "fleet up in" in log.read_text():
            return process
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    raise SystemExit(f"the fleet did not come up within {START_TIMEOUT_S} s; see {log}")


def scope_of(world: DemoWorld) -> list[str]:
    """What the analyst allows: the world's registrable domains (its hosts are reached by name; the
    collectors' own SSRF guard is what lets them connect to the world's loopback block)."""
    return sorted({".".join(name.split(".")[-2:]) for name in world.world.names})


async def wait_for_feeds(collectors: CollectorsClient, world: DemoWorld, timeout_s: float = 90) -> None:
    """The beat polls the world's feed and TAXII collection at start; an investigation reads what they stored."""
    truth = world.ground_truth()
    wanted = {value for kind, value in truth.entities if kind in ("malware", "intrusion-set")}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = await collectors.GraphQuery(collectors_pb2.GraphQueryRequest(
            cypher="MATCH (e:Entity) WHERE e.type IN ['malware', 'intrusion-set'] RETURN e.value", limit=100))
        if wanted <= {json.loads(row)[0] for row in answer.rows_json}:
            return
        await asyncio.sleep(1)
    print(f"warning: the feeds were not polled within {timeout_s:.0f} s; the graph lacks {sorted(wanted)}",
          file=sys.stderr)


async def investigate(nats_creds: dict[str, Any], world: DemoWorld, mode: str, *, budget: swarm_pb2.Budget | None = None,
                      on_event: Callable[[swarm_pb2.InvestigationEvent], None] | None = None,
                      ) -> tuple[swarm_pb2.Investigation, Recall]:
    nc = await nats.connect(nats_creds["url"], user=nats_creds["user"], password=nats_creds["password"])
    try:
        swarm = SwarmClient.over_nats(nc)
        await wait_for_feeds(CollectorsClient.over_nats(nc), world)
        _, target = world.target
        started = await swarm.StartInvestigation(swarm_pb2.StartInvestigationRequest(
            target=target, mode=MODES[mode], scope=swarm_pb2.Scope(allow=scope_of(world)),
            seeds=[value for seed_kind, value in world.seeds if seed_kind == "url"],
            budget=budget or swarm_pb2.Budget(max_depth=3)))
        async for event in swarm.WatchInvestigation(swarm_pb2.WatchInvestigationRequest(id=started.id),
                                                    timeout_s=3600):
            if on_event is not None and event.kind != "heartbeat":
                on_event(event)
        final = await swarm.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=started.id))
        return final, recall_of(json.loads(final.report_json or "{}"), world)
    finally:
        await nc.close()


def recall_of(report: dict[str, Any], world: DemoWorld) -> Recall:
    entities = {(e["type"], e["value"]) for e in report.get("entities", [])}
    relations = {(r["source"], r["type"], r["target"]) for r in report.get("relationships", [])}
    return world.ground_truth().recall(entities, relations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="hybrid")
    parser.add_argument("--data-dir", type=Path, default=None, help="a running fleet's data directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON, not Markdown")
    args = parser.parse_args(argv)

    def show(event: swarm_pb2.InvestigationEvent) -> None:
        data = json.loads(event.data_json)
        brief = {k: v for k, v in data.items() if k in ("phase", "tool", "target", "args", "status", "warning",
                                                          "statement", "ranking", "winner", "reason", "message")}
        print(f"  [{event.kind}] {json.dumps(brief)[:160]}", file=sys.stderr, flush=True)

    with DemoWorld() as world, tempfile.TemporaryDirectory(prefix="bev-demo-") as scratch:
        process = None
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(scratch)
            print(f"starting the fleet on the demo world (log: {data_dir / 'up.log'}) ...", file=sys.stderr)
            process = start_fleet(world, data_dir, data_dir / "up.log")
        creds = json.loads((data_dir / "run" / "fleet.json").read_text())["nats"]
        try:
            started = time.monotonic()
            final, recall = asyncio.run(investigate(creds, world, args.mode, on_event=show))
            wall = time.monotonic() - started
        finally:
            if process is not None:
                process.send_signal(signal.SIGINT)
                process.wait(60)
        report = json.loads(final.report_json or "{}")
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            from services.swarm.report import to_markdown
            print(to_markdown(report) if report else "(no report)")
        status = swarm_pb2.Status.Name(final.status).removeprefix("STATUS_").lower()
        print(f"\n{status} in {wall:.0f} s ({args.mode}): entity recall {recall.entities:.2f}, relation recall "
              f"{recall.relations:.2f}, citation integrity {report.get('citation_integrity', 0):.2f}; "
              f"{final.usage.tool_calls} tool calls, {final.usage.tokens} model tokens")
        outside = world.outside()
        print(f"requests outside the investigation's scope: {len(outside)}")
        return 0 if final.status == swarm_pb2.STATUS_COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
