"""`python -m services.monitoring`: run one monitoring instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.monitoring.servicer import build
from services.monitoring.settings import Settings

run_service("monitoring", Settings, build)
