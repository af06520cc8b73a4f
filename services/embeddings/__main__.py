"""`python -m services.embeddings`: run one embeddings instance (see bev.runtime for the start/stop order)."""

from bev.runtime import run_service
from services.embeddings.servicer import build
from services.embeddings.settings import Settings

run_service("embeddings", Settings, build)
