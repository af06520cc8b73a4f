"""The audit log: every mutating call and every denied call through the gateway, one row each in
PostgreSQL (access.audit), also published on the bus as `bev.events.audit`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True)
class AuditEntry:
    key_id: str       # "" when no valid key came with the call
    team: str
    method: str
    route: str        # the route's template, e.g. /api/v1/investigations/{id}
    path: str         # what was asked for
    object_id: str    # the id in the path, or of the object the call made (its Location)
    status: int
    trace_id: str
    client: str       # the peer address
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies, a tenth of the guard's cost per audited call.
        return {"id": self.id, "at": self.at.isoformat(), "key_id": self.key_id, "team": self.team,
                "method": self.method, "route": self.route, "path": self.path, "object_id": self.object_id,
                "status": self.status, "trace_id": self.trace_id, "client": self.client}


class AuditLog:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def write(self, entry: AuditEntry) -> int:
        [entry_id] = await self.write_many([entry])
        return entry_id

    async def write_many(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Insert entries in one statement; their ids in the same order."""
        if not entries:
            return []
        rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(entries))
        params: list[Any] = []
        for n, e in enumerate(entries):
            params += [n, e.at, e.key_id, e.team, e.method, e.route, e.path, e.object_id, e.status, e.trace_id, e.client]
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "with given (n, at, key_id, team, method, route, path, object_id, status, trace_id, client) as "
                f"(values {rows}), written as (insert into access.audit (at, key_id, team, method, route, path, "
                "object_id, status, trace_id, client) select at, key_id, team, method, route, path, object_id, "
                "status, trace_id, client from given order by n returning id) select id from written order by id",
                params)
            return [int(row[0]) for row in await cur.fetchall()]

    async def list(self, *, before: int = 0, limit: int = 100, key_id: str = "", team: str = "",
                   status: int = 0) -> list[AuditEntry]:
        """Newest first: entries with ids below `before` (0: from the newest), optionally one key's,
        one team's or one status's."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "select id, at, key_id, team, method, route, path, object_id, status, trace_id, client "
                "from access.audit where (%s = 0 or id < %s) and (%s = '' or key_id = %s) "
                "and (%s = '' or team = %s) and (%s = 0 or status = %s) order by id desc limit %s",
                (before, before, key_id, key_id, team, team, status, status, limit))
            return [AuditEntry(**row) for row in await cur.fetchall()]
