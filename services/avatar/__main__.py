"""`python -m services.avatar`: run one avatar instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.avatar.servicer import build
from services.avatar.settings import Settings

run_service("avatar", Settings, build)
