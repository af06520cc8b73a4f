"""API keys: random, shown once, stored as HMAC-SHA256(pepper, secret) in PostgreSQL (schema `access`).

A key reads `bev_<id>_<secret>`: the id is public (listings, revocation, logs, the audit log), the
secret is 256 random bits that only its holder ever sees. The pepper lives in Vault (secret
`gateway`, field `pepper`), so a copy of the database alone cannot test guesses offline. An HMAC
over a 256-bit random secret needs no slow hash (argon2 guards low-entropy passwords), so checking
a key costs microseconds, which keeps the gateway's per-request price low (bench/bench_gateway.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bev.vocab import Tlp

SCOPES = ("read", "write", "admin")
PREFIX = "bev_"
BOOTSTRAP_ID = "bootstrap"  # the embedded fleet's admin key (`api_key` in run/fleet.json)
DEFAULT_REQUESTS_PER_HOUR = 1000
DEFAULT_TOKENS_PER_DAY = 200_000
_ID = re.compile(r"^[a-z0-9]{1,32}$")
_TEAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_COLUMNS = ("id, name, team, scopes, max_tlp, requests_per_hour, tokens_per_day, created_at, created_by, "
            "expires_at, revoked_at")


class InvalidKeyRequest(ValueError):
    """A key cannot be made as asked (unknown scope, bad team name...); str() says why."""


@dataclass(frozen=True)
class ApiKey:
    """A key's record: everything about it except its secret."""

    id: str
    name: str
    team: str
    scopes: frozenset[str]
    max_tlp: Tlp
    requests_per_hour: int
    tokens_per_day: int
    created_at: datetime
    created_by: str = ""
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def state(self, now: datetime | None = None) -> str:
        """active, expired or revoked."""
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "team": self.team, "scopes": sorted(self.scopes),
                "max_tlp": self.max_tlp.value, "requests_per_hour": self.requests_per_hour,
                "tokens_per_day": self.tokens_per_day, "created_at": self.created_at.isoformat(),
                "created_by": self.created_by, "state": self.state(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def split(presented: str) -> tuple[str, str] | None:
    """`bev_<id>_<secret>` -> (id, secret); None for anything else."""
    if not presented.startswith(PREFIX):
        return None
    key_id, sep, secret = presented[len(PREFIX):].partition("_")
    if not sep or not _ID.match(key_id) or not secret:
        return None
    return key_id, secret


def new_key(key_id: str | None = None) -> tuple[str, str, str]:
    """A fresh key: (id, secret, the whole key as its holder sends it)."""
    key_id = key_id or base64.b32encode(secrets.token_bytes(10)).decode().lower()
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


def _row(row: dict[str, Any]) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], team=row["team"], scopes=frozenset(row["scopes"]),
                  max_tlp=Tlp(row["max_tlp"]), requests_per_hour=row["requests_per_hour"],
                  tokens_per_day=row["tokens_per_day"], created_at=row["created_at"], created_by=row["created_by"],
                  expires_at=row["expires_at"], revoked_at=row["revoked_at"])


def check_request(name: str, scopes: Iterable[str], team: str) -> frozenset[str]:
    """The scopes asked for, checked; InvalidKeyRequest says what is wrong."""
    wanted = frozenset(s.strip().lower() for s in scopes if s.strip())
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise InvalidKeyRequest(f"unknown scope {', '.join(unknown)}; use read, write or admin")
    if not wanted:
        raise InvalidKeyRequest("a key needs at least one scope: read, write or admin")
    if not name.strip() or len(name) > 200:
        raise InvalidKeyRequest("a key needs a name of 1-200 characters")
    if not _TEAM.match(team):
        raise InvalidKeyRequest(f"team {team!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return wanted


class KeyStore:
    """API keys in PostgreSQL; `pepper` is the gateway's Vault secret."""

    def __init__(self, pool: AsyncConnectionPool[Any], pepper: str) -> None:
        if len(pepper) < 16:
            raise ValueError("the API key pepper must be at least 16 characters")
        self.pool = pool
        self._pepper = pepper.encode()

    def _hmac(self, secret: str) -> bytes:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    async def create(self, name: str, scopes: Iterable[str], team: str = "default", *, max_tlp: Tlp = Tlp.AMBER,
                     expires_at: datetime | None = None, requests_per_hour: int = DEFAULT_REQUESTS_PER_HOUR,
                     tokens_per_day: int = DEFAULT_TOKENS_PER_DAY, created_by: str = "",
                     key_id: str | None = None) -> tuple[ApiKey, str]:
        """A new key: its record and the key itself, which is never stored and cannot be shown again."""
        wanted = check_request(name, scopes, team)
        if requests_per_hour < 1 or tokens_per_day < 1:
            raise InvalidKeyRequest("requests_per_hour and tokens_per_day must be at least 1")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise InvalidKeyRequest("expires_at is in the past")
        key_id, secret, whole = new_key(key_id)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"insert into access.api_keys (id, name, team, scopes, max_tlp, secret_hmac, requests_per_hour, "
                f"tokens_per_day, created_by, expires_at) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                f"returning {_COLUMNS}",
                (key_id, name.strip(), team, sorted(wanted), max_tlp.value, self._hmac(secret), requests_per_hour,
                 tokens_per_day, created_by, expires_at))
            row = await cur.fetchone()
        assert row is not None
        return _row(row), whole

    async def ensure(self, whole: str, name: str, scopes: Sequence[str], team: str, max_tlp: Tlp) -> ApiKey:
        """Make `whole` (a key generated elsewhere, such as the embedded fleet's bootstrap key) a valid
        key with these properties; its secret replaces any earlier one under the same id."""
        parts = split(whole)
        if parts is None:
            raise InvalidKeyRequest("not a BEV API key (bev_<id>_<secret>)")
        key_id, secret = parts
        wanted = check_request(name, scopes, team)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"insert into access.api_keys (id, name, team, scopes, max_tlp, secret_hmac, requests_per_hour, "
                f"tokens_per_day, created_by) values (%s, %s, %s, %s, %s, %s, %s, %s, 'fleet') "
                f"on conflict (id) do update set secret_hmac = excluded.secret_hmac, scopes = excluded.scopes, "
                f"team = excluded.team, max_tlp = excluded.max_tlp, revoked_at = null returning {_COLUMNS}",
                (key_id, name, team, sorted(wanted), max_tlp.value, self._hmac(secret), 100_000, 10_000_000))
            row = await cur.fetchone()
        assert row is not None
        return _row(row)

    async def verify(self, presented: str) -> ApiKey | None:
        """The record of the key `presented` if its secret is right (whatever its state); else None."""
        parts = split(presented)
        if parts is None:
            return None
        key_id, secret = parts
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"select {_COLUMNS}, secret_hmac from access.api_keys where id = %s", (key_id,))
            row = await cur.fetchone()
        if row is None or not hmac.compare_digest(bytes(row["secret_hmac"]), self._hmac(secret)):
            return None
        return _row(row)

    async def get(self, key_id: str) -> ApiKey | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"select {_COLUMNS} from access.api_keys where id = %s", (key_id,))
            row = await cur.fetchone()
        return None if row is None else _row(row)

    async def list(self, *, team: str = "", after: str = "", limit: int = 100) -> list[ApiKey]:
        """Keys ordered by id, after the id `after`; only `team`'s when given."""
        # Ids are [a-z0-9]: a position with NUL (which PostgreSQL text cannot hold) orders like its
        # part before the NUL, among ids.
        after = after.split("\x00", 1)[0]
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"select {_COLUMNS} from access.api_keys where id > %s and (%s = '' or team = %s) "
                f"order by id limit %s", (after, team, team, limit))
            return [_row(row) for row in await cur.fetchall()]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (idempotent: an already revoked key keeps its first revocation time)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"update access.api_keys set revoked_at = coalesce(revoked_at, now()) where id = %s returning {_COLUMNS}",
                (key_id,))
            row = await cur.fetchone()
        return None if row is None else _row(row)

