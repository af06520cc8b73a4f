"""What analysts read about investigations, in PostgreSQL (schema `swarm`): the investigation rows,
their evidence, tool calls, events, live agents, and the swarm replicas' heartbeats.

The durable workflow state is DBOS's (schema `dbos`); these rows are written by its steps. Writes
that a re-run step could repeat are idempotent: evidence ids and tool-call keys are deterministic
(`evidence_id`, `call_key`) and inserted with `on conflict do nothing`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from bev import migrations

SCHEMA = "swarm"
MIGRATIONS = Path(__file__).parent / "migrations"
FINISHED = ("completed", "failed", "cancelled", "budget_exhausted")


def migrate(dsn: str) -> str:
    return migrations.migrate(dsn, SCHEMA, MIGRATIONS)


def evidence_id(investigation_id: str, kind: str, key: str) -> str:
    """The same finding in the same investigation is the same evidence item, however often a step runs."""
    digest = hashlib.sha256(f"{investigation_id}\x00{kind}\x00{key}".encode()).hexdigest()
    return f"ev-{digest[:24]}"


def call_key(tool: str, args: Mapping[str, Any]) -> str:
    """A tool call's idempotency key: the tool and its arguments."""
    return hashlib.sha256(f"{tool}\x00{json.dumps(args, sort_keys=True)}".encode()).hexdigest()[:32]


@dataclass
class InvestigationRow:
    id: str
    target: str
    target_type: str
    stix_type: str
    mode: str
    status: str
    phase: str
    progress: float
    budget: dict[str, Any]
    scope: dict[str, Any]
    seeds: list[str]
    tlp: str
    tokens: int
    cancel_requested: bool
    error: str
    report: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tool_calls: int = 0
    team: str = ""  # '' = no team (made by an admin key or another service)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def wall_s(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at or datetime.now(UTC)
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass
class EvidenceRow:
    id: str
    investigation_id: str
    kind: str
    uri: str
    collector: str
    collected_at: datetime
    tlp: str
    content: str
    document_id: str = ""
    start: int = 0
    end: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventRow:
    id: int
    investigation_id: str
    kind: str
    at: datetime
    data: dict[str, Any]


@dataclass
class AgentRow:
    investigation_id: str
    agent: str
    role: str
    activity: str
    since: datetime
    instance: str


_INVESTIGATION_COLUMNS = (
    "i.id, i.target, i.target_type, i.stix_type, i.mode, i.status, i.phase, i.progress, i.budget, i.scope, "
    "i.seeds, i.tlp, i.tokens, i.cancel_requested, i.error, {report}, i.created_at, i.started_at, i.finished_at, "
    "(select count(*) from swarm.tool_calls t where t.investigation_id = i.id)::int as tool_calls, i.team"
)


@dataclass(frozen=True)
class Visibility:
    """Which rows a caller may see: `team` None = every team's; `tlps` None = any label, else the
    labels (storage text) at or below the caller's ceiling. Filters lists in SQL, so that a page
    and its cursor count only what the caller may see."""

    team: str | None = None
    tlps: tuple[str, ...] | None = None

    def where(self, alias: str, params: dict[str, Any], *, tlp: bool = True) -> list[str]:
        """SQL conditions on table `alias` (named parameters added to `params`); `tlp` False for
        tables without a label (workflows)."""
        conditions = []
        if self.team is not None:
            conditions.append(f"{alias}.team = %(team)s")
            params["team"] = self.team
        if tlp and self.tlps is not None:
            conditions.append(f"{alias}.tlp = any(%(tlps)s)")
            params["tlps"] = list(self.tlps)
        return conditions


EVERYTHING = Visibility()


class Store:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, max_size: int = 8) -> Store:
        async def configure(conn: Any) -> None:
            await conn.set_autocommit(True)

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=max_size, open=False,
                                                             configure=configure)
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def _fetch(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return list(await cur.fetchall()) if cur.description else []

    async def _execute(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return int(cursor.rowcount)

    # -- investigations ---------------------------------------------------------------------------

    async def create(self, *, id: str, target: str, target_type: str, stix_type: str, mode: str,
                     budget: Mapping[str, Any], scope: Mapping[str, Any], seeds: Sequence[str], tlp: str,
                     team: str = "", max_active: int = 0) -> bool:
        """Inserts it, unless `team` (non-empty) already has `max_active` (> 0) queued or running:
        then False and nothing is stored. The count and the insert run under a per-team advisory
        lock in one transaction, so two starts racing for a team's last slot cannot both win."""
        async with self.pool.connection() as conn, conn.transaction():
            if team and max_active > 0:
                await conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"swarm.team:{team}",))
                cursor = await conn.execute(
                    "select count(*) from swarm.investigations where team = %s and status in ('queued', 'running')",
                    (team,))
                active = await cursor.fetchone()
                if active is not None and int(active[0]) >= max_active:
                    return False
            await conn.execute(
                "insert into swarm.investigations (id, target, target_type, stix_type, mode, budget, scope, seeds, "
                "tlp, team) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (id, target, target_type, stix_type, mode, Jsonb(dict(budget)), Jsonb(dict(scope)),
                 Jsonb(list(seeds)), tlp, team))
        return True

    async def get(self, investigation_id: str, *, report: bool = True) -> InvestigationRow | None:
        columns = _INVESTIGATION_COLUMNS.format(report="i.report" if report else "null::jsonb as report")
        rows = await self._fetch(f"select {columns} from swarm.investigations i where i.id = %s", (investigation_id,))
        return InvestigationRow(**rows[0]) if rows else None

    async def page(self, *, status: str = "", limit: int = 50, before: tuple[datetime, str] | None = None,
                   visible: Visibility = EVERYTHING) -> list[InvestigationRow]:
        columns = _INVESTIGATION_COLUMNS.format(report="null::jsonb as report")
        params = dict[str, Any](limit=limit)
        where = ["true", *visible.where("i", params)]
        if status:
            where.append("i.status = %(status)s")
            params["status"] = status
        if before is not None:
            where.append("(i.created_at, i.id) < (%(at)s, %(id)s)")
            params.update(at=before[0], id=before[1])
        rows = await self._fetch(f"select {columns} from swarm.investigations i where {' and '.join(where)} "
                                 "order by i.created_at desc, i.id desc limit %(limit)s", params)
        return [InvestigationRow(**row) for row in rows]

    async def start(self, investigation_id: str) -> None:
        """Running, unless it already finished (a recovered workflow of a cancelled one)."""
        await self._execute("update swarm.investigations set status = 'running', "
                            "started_at = coalesce(started_at, now()) where id = %s and status = 'queued'",
                            (investigation_id,))

    async def set_phase(self, investigation_id: str, phase: str, progress: float) -> None:
        await self._execute("update swarm.investigations set phase = %s, progress = greatest(progress, %s) "
                            "where id = %s", (phase, progress, investigation_id))

    async def set_scope(self, investigation_id: str, scope: Mapping[str, Any]) -> None:
        await self._execute("update swarm.investigations set scope = %s where id = %s",
                            (Jsonb(dict(scope)), investigation_id))

    async def warnings(self, investigation_id: str) -> list[dict[str, Any]]:
        rows = await self._fetch("select data from swarm.events where investigation_id = %s and kind = 'warning' "
                                 "order by id", (investigation_id,))
        return [row["data"] for row in rows]

    async def add_tokens(self, investigation_id: str, tokens: int) -> int:
        rows = await self._fetch("update swarm.investigations set tokens = tokens + %s where id = %s returning tokens",
                                 (tokens, investigation_id))
        return int(rows[0]["tokens"]) if rows else 0

    async def request_cancel(self, investigation_id: str) -> bool:
        """Marks it; the workflow notices between tool calls. False: it had already finished."""
        return await self._execute(
            "update swarm.investigations set cancel_requested = true where id = %s and status in ('queued', 'running')",
            (investigation_id,)) > 0

    async def finish(self, investigation_id: str, status: str, report: Mapping[str, Any] | None,
                     error: str = "") -> bool:
        """Once: the first finisher wins (a workflow and a cancel racing to close it)."""
        return await self._execute(
            "update swarm.investigations set status = %s, report = %s, error = %s, progress = "
            "case when %s = 'completed' then 1 else progress end, finished_at = now(), "
            "started_at = coalesce(started_at, now()) where id = %s and status in ('queued', 'running')",
            (status, Jsonb(dict(report)) if report is not None else None, error, status, investigation_id)) > 0

    async def unfinished(self) -> list[str]:
        rows = await self._fetch("select id from swarm.investigations where status in ('queued', 'running')")
        return [row["id"] for row in rows]

    # -- evidence ----------------------------------------------------------------------------------

    async def add_evidence(self, items: Sequence[EvidenceRow]) -> list[str]:
        """Stores the items; returns the ids that were new (a re-run stores nothing twice)."""
        new: list[str] = []
        async with self.pool.connection() as conn:
            for item in items:
                cursor = await conn.execute(
                    "insert into swarm.evidence (id, investigation_id, kind, uri, collector, collected_at, tlp, "
                    "content, document_id, start_offset, end_offset, data) values "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict (id) do nothing",
                    (item.id, item.investigation_id, item.kind, item.uri, item.collector, item.collected_at,
                     item.tlp, item.content, item.document_id, item.start, item.end, Jsonb(item.data)))
                if cursor.rowcount:
                    new.append(item.id)
        return new

    async def evidence(self, investigation_id: str) -> list[EvidenceRow]:
        rows = await self._fetch(
            "select id, investigation_id, kind, uri, collector, collected_at, tlp, content, document_id, "
            "start_offset as start, end_offset as end, data from swarm.evidence where investigation_id = %s "
            "order by created_at, id", (investigation_id,))
        return [EvidenceRow(**row) for row in rows]

    async def get_evidence(self, evidence_id_: str) -> EvidenceRow | None:
        rows = await self._fetch(
            "select id, investigation_id, kind, uri, collector, collected_at, tlp, content, document_id, "
            "start_offset as start, end_offset as end, data from swarm.evidence where id = %s", (evidence_id_,))
        return EvidenceRow(**rows[0]) if rows else None

    # -- tool calls --------------------------------------------------------------------------------

    async def begin_call(self, investigation_id: str, key: str, tool: str, args: Mapping[str, Any],
                         agent: str) -> bool:
        """Records a tool call; False if this very call (same key) was made before."""
        return await self._execute(
            "insert into swarm.tool_calls (investigation_id, key, tool, args, agent) values (%s, %s, %s, %s, %s) "
            "on conflict do nothing", (investigation_id, key, tool, Jsonb(dict(args)), agent)) > 0

    async def end_call(self, investigation_id: str, key: str, status: str, error: str = "",
                       result: Any = None) -> None:
        await self._execute("update swarm.tool_calls set status = %s, error = %s, result = %s, finished_at = now() "
                            "where investigation_id = %s and key = %s",
                            (status, error, Jsonb(result) if result is not None else None, investigation_id, key))

    async def call_outcome(self, investigation_id: str, key: str) -> tuple[str, str, Any]:
        """(status, error, result) of a call made before; status "" if never made."""
        rows = await self._fetch("select status, error, result from swarm.tool_calls "
                                 "where investigation_id = %s and key = %s", (investigation_id, key))
        return (str(rows[0]["status"]), str(rows[0]["error"]), rows[0]["result"]) if rows else ("", "", None)

    async def count_calls(self, investigation_id: str) -> int:
        rows = await self._fetch("select count(*)::int as n from swarm.tool_calls where investigation_id = %s",
                                 (investigation_id,))
        return int(rows[0]["n"])

    # -- events ------------------------------------------------------------------------------------

    async def add_event(self, investigation_id: str, kind: str, data: Mapping[str, Any]) -> EventRow:
        rows = await self._fetch(
            "insert into swarm.events (investigation_id, kind, data) values (%s, %s, %s) returning id, at",
            (investigation_id, kind, Jsonb(dict(data))))
        return EventRow(int(rows[0]["id"]), investigation_id, kind, rows[0]["at"], dict(data))

    async def events(self, investigation_id: str, after_id: int = 0, limit: int = 500) -> list[EventRow]:
        rows = await self._fetch(
            "select id, investigation_id, kind, at, data from swarm.events where investigation_id = %s and id > %s "
            "order by id limit %s", (investigation_id, after_id, limit))
        return [EventRow(**row) for row in rows]

    # -- agents and replicas -----------------------------------------------------------------------

    async def set_agent(self, investigation_id: str, agent: str, role: str, activity: str, instance: str) -> None:
        await self._execute(
            "insert into swarm.agents (investigation_id, agent, role, activity, instance) values (%s, %s, %s, %s, %s) "
            "on conflict (investigation_id, agent) do update set role = excluded.role, activity = excluded.activity, since = now(), "
            "instance = excluded.instance", (investigation_id, agent, role, activity, instance))

    async def clear_agents(self, investigation_id: str) -> None:
        await self._execute("delete from swarm.agents where investigation_id = %s", (investigation_id,))

    async def agents(self, visible: Visibility = EVERYTHING) -> list[AgentRow]:
        """The live agents of the investigations `visible` lets the caller see."""
        params: dict[str, Any] = {}
        where = ["true", *visible.where("i", params)]
        rows = await self._fetch("select a.investigation_id, a.agent, a.role, a.activity, a.since, a.instance "
                                 "from swarm.agents a join swarm.investigations i on i.id = a.investigation_id "
                                 f"where {' and '.join(where)} order by a.investigation_id, a.agent", params)
        return [AgentRow(**row) for row in rows]

    async def heartbeat(self, instance: str, node: str) -> None:
        await self._execute("insert into swarm.replicas (instance, node) values (%s, %s) on conflict (instance) "
                            "do update set heartbeat_at = now()", (instance, node))

    async def live_replicas(self, within_s: float) -> set[str]:
        rows = await self._fetch("select instance from swarm.replicas where heartbeat_at > now() - make_interval("
                                 "secs => %s)", (within_s,))
        return {row["instance"] for row in rows}

    async def forget_replica(self, instance: str) -> None:
        await self._execute("delete from swarm.replicas where instance = %s", (instance,))

    # -- workflows (services/swarm/dag.py) ---------------------------------------------------------

    async def create_workflow(self, *, id: str, name: str, spec: Mapping[str, Any],
                              steps: Mapping[str, Mapping[str, Any]], team: str = "") -> None:
        await self._execute("insert into swarm.workflows (id, name, spec, steps, team) values (%s, %s, %s, %s, %s)",
                            (id, name, Jsonb(dict(spec)), Jsonb({k: dict(v) for k, v in steps.items()}), team))

    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        rows = await self._fetch(f"select {_WORKFLOW_COLUMNS.format(steps='w.steps', spec='w.spec')} "
                                 "from swarm.workflows w where w.id = %s", (workflow_id,))
        return WorkflowRow(**rows[0]) if rows else None

    async def page_workflows(self, *, status: str = "", limit: int = 50, before: tuple[datetime, str] | None = None,
                             visible: Visibility = EVERYTHING) -> list[WorkflowRow]:
        """Newest first; each step's state without its output, and the spec without its steps' bodies."""
        steps = ("coalesce((select jsonb_object_agg(e.key, e.value - 'output') from jsonb_each(w.steps) e), "
                 "'{}'::jsonb)")
        spec = ("jsonb_build_object('name', w.spec -> 'name', 'steps', coalesce((select jsonb_agg("
                "jsonb_build_object('id', s -> 'id', 'type', s -> 'type', 'depends_on', s -> 'depends_on')) "
                "from jsonb_array_elements(w.spec -> 'steps') s), '[]'::jsonb))")
        params = dict[str, Any](limit=limit)
        where = ["true", *visible.where("w", params, tlp=False)]
        if status:
            where.append("w.status = %(status)s")
            params["status"] = status
        if before is not None:
            where.append("(w.created_at, w.id) < (%(at)s, %(id)s)")
            params.update(at=before[0], id=before[1])
        rows = await self._fetch(f"select {_WORKFLOW_COLUMNS.format(steps=steps, spec=spec)} from swarm.workflows w "
                                 f"where {' and '.join(where)} order by w.created_at desc, w.id desc "
                                 "limit %(limit)s", params)
        return [WorkflowRow(**row) for row in rows]

    async def start_workflow(self, workflow_id: str) -> None:
        """Running, unless it already finished (a recovered workflow that was cancelled)."""
        await self._execute("update swarm.workflows set status = 'running', started_at = coalesce(started_at, now()) "
                            "where id = %s and status = 'queued'", (workflow_id,))

    async def set_workflow_step(self, workflow_id: str, step_id: str, state: Mapping[str, Any],
                                progress: float | None = None) -> bool:
        """One step's state, while the workflow is unfinished (a step still running when the workflow was
        cancelled writes nothing). False: the workflow had finished."""
        return await self._execute(
            "update swarm.workflows set steps = jsonb_set(steps, %s::text[], %s), "
            "progress = greatest(progress, coalesce(%s, progress)) "
            "where id = %s and status in ('queued', 'running')",
            ([step_id], Jsonb(dict(state)), progress, workflow_id)) > 0

    async def request_workflow_cancel(self, workflow_id: str) -> bool:
        """Marks it; the workflow notices before its next step. False: it had already finished."""
        return await self._execute(
            "update swarm.workflows set cancel_requested = true where id = %s and status in ('queued', 'running')",
            (workflow_id,)) > 0

    async def finish_workflow(self, workflow_id: str, status: str, error: str,
                              steps: Mapping[str, Mapping[str, Any]], progress: float) -> bool:
        """Once: the first finisher wins (the workflow and a cancel racing to close it)."""
        return await self._execute(
            "update swarm.workflows set status = %s, error = %s, steps = %s, progress = %s, finished_at = now(), "
            "started_at = coalesce(started_at, now()) where id = %s and status in ('queued', 'running')",
            (status, error, Jsonb({k: dict(v) for k, v in steps.items()}), progress, workflow_id)) > 0


WORKFLOW_FINISHED = ("completed", "failed", "cancelled")


@dataclass
class WorkflowRow:
    id: str
    name: str
    spec: dict[str, Any]
    status: str
    progress: float
    steps: dict[str, dict[str, Any]]
    error: str
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    team: str = ""

    @property
    def finished(self) -> bool:
        return self.status in WORKFLOW_FINISHED


_WORKFLOW_COLUMNS = ("w.id, w.name, {spec} as spec, w.status, w.progress, {steps} as steps, w.error, "
                     "w.cancel_requested, w.created_at, w.started_at, w.finished_at, w.team")
