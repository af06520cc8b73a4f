"""Fixtures of each service live next to it (services/<name>/testing.py); the engine fixtures come
from BEV's pytest plugin (bev.testing.plugin). pytest_plugins is only honoured in this root file."""

pytest_plugins = [
    "services.collectors.testing",
    "services.embeddings.testing",
    "services.reasoning.testing",
]
