"""Who may use the gateway and what they did: API keys (keys.py) and the audit log (audit.py), in
PostgreSQL schema `access`. Shared by the gateway service and `bev keys`."""

from pathlib import Path

from bev import migrations
from bev.access.audit import AuditEntry, AuditLog
from bev.access.keys import SCOPES, ApiKey, InvalidKeyRequest, KeyStore, new_key, split

SCHEMA = "access"
MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(dsn: str) -> str:
    """Bring schema `access` to its newest revision (blocking; run at the gateway's start)."""
    return migrations.migrate(dsn, SCHEMA, MIGRATIONS)


__all__ = ["SCOPES", "ApiKey", "AuditEntry", "AuditLog", "InvalidKeyRequest", "KeyStore", "migrate", "new_key",
           "split"]
