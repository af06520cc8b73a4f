"""`python -m services.reasoning`: run one reasoning instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.reasoning.servicer import build
from services.reasoning.settings import Settings

run_service("reasoning", Settings, build)
