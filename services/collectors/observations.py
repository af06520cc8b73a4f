"""Observations and their provenance in PostgreSQL (schema `collectors`, owned by this service).

The schema is versioned with Alembic and applied at every start through bev.migrations, like the
embeddings service's corpus schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bev import migrations
from bev.vocab import Tlp
from services.collectors.observables import BEV_NAMESPACE

SCHEMA = "collectors"
MIGRATIONS = Path(__file__).parent / "migrations"


class ObservationStoreUnavailable(Exception):
    """PostgreSQL cannot be reached; str() is one line."""


def migrate(dsn: str) -> str:
    """Bring the collectors schema to the newest revision (idempotent, blocking); returns the revision."""
    try:
        return migrations.migrate(dsn, SCHEMA, MIGRATIONS)
    except migrations.DatabaseUnavailable as exc:
        raise ObservationStoreUnavailable(str(exc)) from None


def observation_id(collector: str, source: str, entity_id: str, investigation_id: str) -> str:
    return str(uuid.uuid5(BEV_NAMESPACE, f"obs|{collector}|{source}|{entity_id}|{investigation_id}"))


@dataclass(frozen=True)
class ObservationRow:
    id: str
    entity_id: str
    entity_type: str
    value: str
    source: str
    collector: str
    investigation_id: str
    tlp: Tlp  # a label read back from PostgreSQL becomes its Tlp (an unknown one: bev.vocab.UnknownTlp)
    confidence: int
    seen: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "tlp", Tlp(self.tlp))
        if not 0 <= self.confidence <= 100:
            raise ValueError(f"confidence must be 0-100, not {self.confidence}")


_UPSERT = f"""
insert into {SCHEMA}.observations
    (id, entity_id, entity_type, value, source, collector, investigation_id, tlp, confidence, first_seen, last_seen)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
on conflict (id) do update set
    last_seen = greatest(observations.last_seen, excluded.last_seen),
    confidence = greatest(observations.confidence, excluded.confidence)
"""


class ObservationStore:
    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._pool = AsyncConnectionPool(dsn, min_size=1, max_size=max_size, open=False,
                                         kwargs={"autocommit": False})

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=10)
        except PoolTimeout as exc:
            raise ObservationStoreUnavailable(f"cannot reach PostgreSQL: {exc}") from None

    async def close(self) -> None:
        await self._pool.close()

    async def record(self, rows: Sequence[ObservationRow]) -> None:
        """Insert or refresh observations in one transaction (committed before the caller reports them)."""
        if not rows:
            return
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(_UPSERT, [
                (r.id, r.entity_id, r.entity_type, r.value, r.source, r.collector, r.investigation_id, r.tlp.value,
                 r.confidence, r.seen, r.seen) for r in rows])

    async def for_entity(self, entity_id: str) -> list[ObservationRow]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                f"select id::text, entity_id, entity_type, value, source, collector, investigation_id, tlp, "
                f"confidence, last_seen from {SCHEMA}.observations where entity_id = %s order by last_seen desc",
                (entity_id,))
            return [ObservationRow(*row) for row in await cur.fetchall()]

    async def first_seen(self, entity_ids: Sequence[str]) -> dict[str, datetime]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(f"select entity_id, min(first_seen) from {SCHEMA}.observations "
                              f"where entity_id = any(%s) group by entity_id", (list(entity_ids),))
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def finished_task(self, task_key: str) -> int | None:
        """The observation count a completed task recorded, or None if it never completed."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(f"select observations from {SCHEMA}.task_runs where task_key = %s", (task_key,))
            row = await cur.fetchone()
            return int(row[0]) if row else None

    async def record_finished_task(self, task_key: str, task_name: str, observations: int) -> bool:
        """Record a completion; False when one was already recorded (the first one stands)."""
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"insert into {SCHEMA}.task_runs (task_key, task_name, observations) values (%s, %s, %s) "
                "on conflict (task_key) do nothing", (task_key, task_name, observations))
            return cur.rowcount == 1

    async def count(self) -> int:
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(f"select count(*) from {SCHEMA}.observations")
            row = await cur.fetchone()
            return int(row[0]) if row else 0


def now() -> datetime:
    return datetime.now(UTC)
