"""The audit log: every mutating call and every denied call through the gateway, one row each in
PostgreSQL (access.audit), also published on the bus as `bev.events.audit`.

A batch is written with one constant statement whose only parameter is the batch as a JSON array
(json_populate_recordset over the table's own row type): psycopg adapts one string instead of
eleven values per entry, and PostgreSQL keeps the statement prepared. Each entry's JSON is built
once (`AuditEntry.fields_json`) and serves both the row and the entry's event (`event_body`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

# The entries in the given order, their ids in that order (a bigserial hands them out as rows are
# inserted, in `ordinality` order). One statement, so in autocommit it is still all or nothing.
_INSERT = (
    "with written as (insert into access.audit (at, key_id, team, method, route, path, object_id, status, "
    "trace_id, client) select at, key_id, team, method, route, path, object_id, status, trace_id, client "
    "from json_populate_recordset(null::access.audit, %s::json) with ordinality as given order by ordinality "
    "returning id) select id from written order by id")


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

    def fields_json(self) -> str:
        """to_json() without its id, as JSON text (built once: the row and the event share it). A
        NUL (a path may hold one: %00), which a PostgreSQL text cannot, reads U+FFFD, so one odd
        path cannot fail its whole batch."""
        # Kept in the instance's __dict__ by hand: functools.cached_property takes a lock per read
        # on Python 3.11, which cost more than the encoding.
        cached: str | None = self.__dict__.get("_fields_json")
        if cached is None:
            fields = self.to_json()
            del fields["id"]
            cached = self.__dict__["_fields_json"] = json.dumps(fields).replace("\\u0000", "\\ufffd")
        return cached

    def event_body(self, entry_id: int) -> bytes:
        """The entry's event on the bus: to_json() with the id it was written under (same bytes
        as json.dumps of that dict)."""
        return f'{{"id": {entry_id}, {self.fields_json()[1:]}'.encode()


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
        batch = f"[{','.join([e.fields_json() for e in entries])}]"
        async with self.pool.connection() as conn:
            # One statement needs no transaction around it: autocommit spares the BEGIN and COMMIT
            # round trips (the pool hands the connection on as it found it).
            await conn.set_autocommit(True)
            try:
                cur = await conn.execute(_INSERT, (batch,))
                ids = [int(row[0]) for row in await cur.fetchall()]
            finally:
                if not conn.closed:  # the pool drops a broken connection
                    await conn.set_autocommit(False)
        if len(ids) != len(entries):  # cannot happen short of a changed table: say so, not misnumber
            raise RuntimeError(f"audit batch of {len(entries)} entries came back with {len(ids)} ids")
        return ids

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
