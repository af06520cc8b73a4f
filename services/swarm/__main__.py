"""`python -m services.swarm`: run one swarm instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.swarm.servicer import build
from services.swarm.settings import Settings

run_service("swarm", Settings, build)
