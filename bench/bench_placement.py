"""Replica placement on the three-node lab (issue C7 item 5): the swarm's and the embeddings'
replicas all on THANOS's namespace ("colocated": `replicas: 3` on one node) against one per node
("spread": THANOS, STARLORD, ORACLE1), same count, same machine, so the ratio is what spreading
costs in coordination (routes, TLS, a DBOS queue shared across nodes), not what more hardware gives.

For each placement, one after the other, a fresh lab (`bev.lab.Lab`, its own prefix and subnet)
runs a manifest that differs from deploy/manifest.yaml only in those two services' `nodes` and
`replicas` (and `gpu: false` for embeddings: ORACLE1 has no GPU; neither placement has one here).
Each node sees a copy of the demo world. Measured from this process through THANOS's NATS server:
- embeddings: --callers callers sending Embed calls of 32 new short sentences for --seconds, in
  sentences/s (the queue group spreads them over the three replicas);
- investigations: --investigations started at once through THANOS's gateway on the demo world's
  target (hierarchical, max_depth --max-depth), investigations per minute = completed / minutes
  from the first start to the last end (with their tool calls and model tokens: the same work in
  both placements, so the ratio compares like with like).
Ratios are spread / colocated. Needs root (ip netns).

    .venv/bin/python bench/bench_placement.py   # ~20-30 min on 2 shared cores
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bev.bus import connect_nats
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.lab import Lab
from bev.manifest import load_manifest
from bev.settings import NatsSettings
from services.swarm.demo.investigate import scope_of, wait_for_feeds
from services.swarm.demo.lab import serve_world_copies
from services.swarm.demo.server import DemoWorld

REPO = Path(__file__).resolve().parents[1]
PLACEMENTS = {
    "colocated": {"nodes": ["thanos"], "replicas": 3},
    "spread": {"nodes": ["thanos", "starlord", "oracle1"], "replicas": 1},
}
SUBNET = "10.215.0.0/24"
FINISHED = {"completed", "failed", "cancelled", "budget_exhausted"}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def manifest_for(placement: str, directory: Path) -> Path:
    data = yaml.safe_load((REPO / "deploy" / "manifest.yaml").read_text())
    for service in ("swarm", "embeddings"):
        data["services"][service].update(PLACEMENTS[placement])
    data["services"]["embeddings"]["gpu"] = False
    path = directory / f"manifest-{placement}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_manifest(path)  # valid, with the replicas' ports free
    return path


async def embed_throughput(nats: NatsSettings, callers: int, seconds: float) -> float:
    nc = await connect_nats(nats, "bench-placement")
    try:
        client = EmbeddingsClient.over_nats(nc)
        sent = 0
        end = time.monotonic() + seconds

        async def caller(slot: int) -> None:
            nonlocal sent
            n = 0
            while time.monotonic() < end:
                texts = [f"caller {slot} sentence {n}-{i} about host {n * 32 + i}.example.net" for i in range(32)]
                await client.Embed(embeddings_pb2.EmbedRequest(texts=texts), timeout_s=60)
                sent += len(texts)
                n += 1

        await client.Embed(embeddings_pb2.EmbedRequest(texts=["warm-up"]), timeout_s=120)
        began = time.monotonic()
        await asyncio.gather(*(caller(slot) for slot in range(callers)))
        return sent / (time.monotonic() - began)
    finally:
        await nc.close()


async def feeds_polled(nats: NatsSettings, world: DemoWorld) -> None:
    from bev.collectors.v1.collectors_rpc import CollectorsClient

    nc = await connect_nats(nats, "bench-placement")
    try:
        await wait_for_feeds(CollectorsClient.over_nats(nc), world, timeout_s=180)
    finally:
        await nc.close()


def investigations(lab: Lab, world: DemoWorld, count: int, max_depth: int, timeout_s: float) -> dict[str, float]:
    fleet = lab.fleet("thanos")
    gateway, headers = str(fleet["gateway"]), {"Authorization": f"Bearer {fleet['api_key']}"}
    body = {"target": world.target[1], "mode": "hierarchical", "scope": {"allow": scope_of(world)},
            "seeds": [value for kind, value in world.seeds if kind == "url"], "budget": {"max_depth": max_depth}}
    began = time.monotonic()
    ids = []
    for _ in range(count):
        answer = httpx.post(f"{gateway}/api/v1/investigations", headers=headers, json=body, timeout=30)
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    finished: dict[str, dict[str, Any]] = {}
    while len(finished) < count:
        if time.monotonic() - began > timeout_s:
            raise SystemExit(f"investigations not finished within {timeout_s:.0f} s")
        for investigation_id in ids:
            if investigation_id in finished:
                continue
            got = httpx.get(f"{gateway}/api/v1/investigations/{investigation_id}", headers=headers, timeout=10).json()
            if got["status"] in FINISHED:
                finished[investigation_id] = got
                log(f"  investigation {investigation_id}: {got['status']} after {time.monotonic() - began:.0f} s")
        time.sleep(2)
    wall = time.monotonic() - began
    completed = sum(1 for i in finished.values() if i["status"] == "completed")
    return {"investigations_completed": completed, "investigations_wall_s": round(wall, 1),
            "investigations_per_min": round(completed / (wall / 60), 3),
            "tool_calls": sum(int(i["usage"]["tool_calls"]) for i in finished.values()),
            "tokens": sum(int(i["usage"]["tokens"]) for i in finished.values())}


def run_placement(placement: str, root: Path, world: DemoWorld, args: argparse.Namespace) -> dict[str, float]:
    manifest_path = manifest_for(placement, root)
    lab = Lab(load_manifest(manifest_path), root / placement,
              env={**world.collectors_env(), "BEV_MANIFEST": str(manifest_path)}, prefix="bevplace", subnet=SUBNET)
    try:
        lab.prepare()
        serve_world_copies(lab, world)
        began = time.monotonic()
        lab.start()
        up_s = time.monotonic() - began
        log(f"{placement}: lab up in {up_s:.0f} s")
        nats = NatsSettings.model_validate(lab.fleet("thanos")["nats"])
        asyncio.run(feeds_polled(nats, world))
        embeds = asyncio.run(embed_throughput(nats, args.callers, args.seconds))
        log(f"{placement}: {embeds:.0f} sentences/s")
        figures = investigations(lab, world, args.investigations, args.max_depth, args.timeout)
        log(f"{placement}: {figures}")
        return {"lab_up_s": round(up_s, 1), "embed_sentences_per_s": round(embeds, 1), **figures}
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--investigations", type=int, default=3)
    parser.add_argument("--max-depth", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1500.0)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bev-placement-") as scratch, DemoWorld() as world:
        for placement in PLACEMENTS:
            results[placement] = run_placement(placement, Path(scratch), world, args)
    colocated, spread = results["colocated"], results["spread"]
    out = {
        "bench": "placement",
        **{f"{p}_{k}": v for p, figures in results.items() for k, v in figures.items()},
        "embed_ratio_spread_over_colocated": round(spread["embed_sentences_per_s"] / colocated["embed_sentences_per_s"], 3),
        "investigations_per_min_ratio_spread_over_colocated": round(
            spread["investigations_per_min"] / colocated["investigations_per_min"], 3)
        if colocated["investigations_per_min"] else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
