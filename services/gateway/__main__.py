"""`python -m services.gateway`: run one gateway instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.gateway.servicer import build
from services.gateway.settings import Settings

run_service("gateway", Settings, build)
