"""The demo world in every namespace of a `bev lab` (each node's "internet"): a copy per node on the
same ports as a world served here, so one set of collectors' settings (world.collectors_env()) fits
every node. Each copy is a process in the node's namespace; the lab's take-down kills it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bev.lab import Lab, LabError
from services.swarm.demo.server import DemoWorld

REPO = Path(__file__).resolve().parents[3]


def serve_world_copies(lab: Lab, world: DemoWorld, timeout_s: float = 60) -> list[subprocess.Popen[bytes]]:
    """Start the copies (after lab.prepare(), before lab.start(): the collectors' beat polls the
    world's feeds as it starts) and wait until each serves."""
    copies = []
    for node in lab.nodes:
        with (lab.root / f"world-{node}.log").open("wb") as log:
            copies.append(subprocess.Popen(
                lab.network.argv(node, [sys.executable, "-m", "services.swarm.demo", "--quiet",
                                        "--port", str(world.port), "--dns-port", str(world.dns_port),
                                        "--whois-port", str(world.whois_port)]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO))
    deadline = time.monotonic() + timeout_s
    for node, copy in zip(lab.nodes, copies, strict=True):
        log_path = lab.root / f"world-{node}.log"
        while "# serving" not in log_path.read_text(errors="replace"):
            if copy.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the demo world did not start in {node}'s namespace: "
                               f"{log_path.read_text(errors='replace')[-500:]}")
            time.sleep(0.2)
    return copies
