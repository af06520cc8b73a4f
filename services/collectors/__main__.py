"""`python -m services.collectors`: run one collectors instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.collectors.servicer import build
from services.collectors.settings import Settings

run_service("collectors", Settings, build)
