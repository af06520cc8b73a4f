"""What the worker and beat entry points share: settings, logging and Vault, then the Celery app."""

from __future__ import annotations

import sys

from celery import Celery
from pydantic import ValidationError

from bev.runtime import EXIT_CONFIG, EXIT_DEPENDENCY
from bev.secrets import SecretsUnavailable, VaultSecrets
from bev.telemetry import configure_logging
from services.collectors.settings import Settings
from services.collectors.tasks import create_app


def celery_app(process: str) -> tuple[Settings, Celery]:
    """Settings and the logged-in Celery app, or exit with one line (the same codes services use)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "__".join(str(part) for part in first["loc"]).upper()
        print(f"bev-{process}: invalid setting BEV_{where}: {first['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(process, settings.telemetry)
    secrets = VaultSecrets(settings.vault, "collectors")  # the collectors service's AppRole
    try:
        secrets.login()
        # Read every secret a task may need now, while the single-use login is fresh.
        cached = {name: secrets.read(name) for name in ("redis", "postgres", settings.collectors.graph.backend)}
    except SecretsUnavailable as exc:
        print(f"bev-{process}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_DEPENDENCY) from None
    return settings, create_app(settings, lambda name: cached[name])
