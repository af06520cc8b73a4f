"""BEV's demo world: a small fictional threat-intelligence case (world/) served on loopback.

`DemoWorld` starts its DNS, web and WHOIS servers and says how to point the collectors at them;
`python -m services.swarm.demo` serves it in the foreground and prints the settings.
"""

from services.swarm.demo.server import DemoWorld, Request
from services.swarm.demo.world import WORLD_DIR, GroundTruth, Recall, World

__all__ = ["WORLD_DIR", "DemoWorld", "GroundTruth", "Recall", "Request", "World"]
