"""Agents at work: every tool call an agent makes goes through `Agent.call`, which checks the
agent's role allowlist, the investigation's scope and budget before the RPC runs, records the call
under an idempotency key (a step that runs again after a crash reuses the recorded result instead
of calling again), publishes tool_call / tool_result events and counts it in the metrics.

Collected content is data: the text a model reads comes from evidence, and follow-up fetches come
only from indicators the collectors extracted, each checked against the scope here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from prometheus_client import Counter, Gauge, Histogram

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo, RpcError, while_starting
from bev.telemetry import get_logger
from bev.vocab import Tlp
from services.swarm.roles import AgentRole, get_role
from services.swarm.scope import Scope
from services.swarm.settings import SwarmConfig
from services.swarm.store import InvestigationRow, Store, call_key

log = get_logger(__name__)

EVENT_SUBJECT = "bev.events.investigation"  # .<id>.<kind> on JetStream BEV_EVENTS
EVENT_QUEUE = 10_000  # events waiting for the bus beyond this are not published (their rows stay)
# A publish JetStream does not ack is tried again (same Nats-Msg-Id: stored once) for this long:
# on a NATS cluster a node rejoining makes the stream's leader step down for several seconds.
EVENT_PUBLISH_RETRY_S = 30.0

TOOL_EXECUTIONS = Counter("bev_tool_executions_total", "Tool calls made by investigation agents",
                          ["tool", "status"])
ANALYSES = Counter("bev_osint_analyses_total", "Investigations finished", ["mode", "status"])
DURATION = Histogram("bev_investigation_duration_seconds", "Wall time of finished investigations", ["mode"],
                     buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600))
TOKENS = Histogram("bev_investigation_tokens", "Model tokens one investigation used", ["mode"],
                   buckets=(100, 1000, 5000, 20000, 50000, 100000, 500000))
LIVE_AGENTS = Gauge("bev_swarm_live_agents", "Agents working now in this replica's investigations")


class Stop(Exception):
    """The investigation must stop here: cancelled or out of budget. `status` is how it ends."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Refused(Exception):
    """A tool call that may not run (role, scope); it was not made, and a warning was recorded."""


@dataclass
class Deps:
    """What steps use; one per process (DBOS itself is one per process)."""

    store: Store
    collectors: CollectorsClient
    embeddings: EmbeddingsClient
    reasoning: ReasoningClient
    config: SwarmConfig
    info: InstanceInfo
    data_dir: Path  # workflows' file operations stay under <data_dir>/workflows/<id>/
    nc: NatsClient | None = None
    _outbox: asyncio.Queue[tuple[str, bytes, str]] = field(default_factory=lambda: asyncio.Queue(maxsize=EVENT_QUEUE))
    _publisher: asyncio.Task[None] | None = None
    _emitting: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def emit(self, investigation_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """The event row is the truth (SSE replays it); JetStream carries it to live listeners, in
        order, from one background task, so no step waits on the bus."""
        # One at a time: concurrent agents' inserts could finish out of id order, and the bus must
        # carry the events in the order of their ids (a JetStream replay equals the SSE replay).
        async with self._emitting:
            row = await self.store.add_event(investigation_id, kind, data)
            if self.nc is None:
                return
            payload = json.dumps({"id": row.id, "investigation_id": investigation_id, "kind": kind,
                                  "at": row.at.isoformat(), "data": dict(data)}).encode()
            try:
                self._outbox.put_nowait((f"{EVENT_SUBJECT}.{investigation_id}.{kind}", payload,
                                         f"{investigation_id}.{row.id}"))
            except asyncio.QueueFull:
                log.warning("investigation event not published: the bus is behind", investigation=investigation_id)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish(), name="investigation-events")

    async def _publish(self) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        while True:
            subject, payload, msg_id = await self._outbox.get()
            give_up, wait = time.monotonic() + EVENT_PUBLISH_RETRY_S, 0.25
            while True:
                try:
                    await js.publish(subject, payload, timeout=5, headers={"Nats-Msg-Id": msg_id})
                    break
                except Exception as exc:  # best effort after the retries: the row has the event
                    if time.monotonic() + wait > give_up:
                        log.warning("investigation event not published", subject=subject,
                                    error=str(exc) or type(exc).__name__)
                        break
                    await asyncio.sleep(wait)
                    wait = min(2.0, wait * 2)

    async def close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()


class Investigation:
    """One investigation as a step sees it: its row, scope and budget checks."""

    def __init__(self, deps: Deps, row: InvestigationRow) -> None:
        self.deps = deps
        self.row = row
        self.id = row.id
        self.scope = Scope.from_dict(row.scope)

    def access(self, *, tlp_ceiling: bool = True) -> common_pb2.Access:
        """What this investigation may read from other services: its team's objects and the shared
        ones, up to its own TLP (a raw graph query, which the graph cannot filter by label, goes
        without the ceiling: it only looks up an entity's id)."""
        tlp = Tlp(self.row.tlp).to_proto() if tlp_ceiling else common_pb2.TLP_UNSPECIFIED
        return common_pb2.Access(team=self.row.team, max_tlp=tlp, key_id=f"investigation:{self.id}")

    @classmethod
    async def load(cls, deps: Deps, investigation_id: str) -> Investigation:
        row = await deps.store.get(investigation_id, report=False)
        if row is None:
            raise LookupError(f"investigation {investigation_id} does not exist")
        return cls(deps, row)

    async def emit(self, event: str, /, **data: Any) -> None:
        await self.deps.emit(self.id, event, data)

    async def check(self) -> None:
        """Raises Stop if the investigation was cancelled or its wall-time or token budget is spent."""
        row = await self.deps.store.get(self.id, report=False)
        if row is None or row.cancel_requested:
            raise Stop("cancelled", "cancelled by the analyst")
        self.row = row
        budget = row.budget
        if row.wall_s > float(budget["max_wall_s"]):
            raise Stop("budget_exhausted", f"wall time {row.wall_s:.0f} s over the budget of {budget['max_wall_s']} s")
        if row.tokens > int(budget["max_tokens"]):
            raise Stop("budget_exhausted", f"{row.tokens} model tokens over the budget of {budget['max_tokens']}")

    def agent(self, name: str, role: str | None = None) -> Agent:
        return Agent(self, name, get_role(role or name))


@dataclass
class Agent:
    investigation: Investigation
    name: str
    role: AgentRole

    @property
    def id(self) -> str:
        return f"{self.investigation.id}/{self.name}"

    async def doing(self, activity: str) -> None:
        deps = self.investigation.deps
        await deps.store.set_agent(self.investigation.id, self.name, self.role.name, activity, deps.info.instance)

    async def call(self, tool: str, args: Mapping[str, Any], run: Callable[[], Awaitable[Any]]) -> Any:
        """Run `run` (the RPC) as this agent's call of `tool` with `args`; its JSON-able result.

        Refused (role, scope) -> a warning event and `Refused`; budget spent or cancelled -> `Stop`;
        an RPC error -> a tool_result event with the error and the RpcError raised again.
        """
        inv = self.investigation
        deps = inv.deps
        args = dict(args)
        if not self.role.may_call(tool):
            await inv.emit("warning", agent=self.name, warning="role", message=f"{self.role.name} may not call {tool}")
            TOOL_EXECUTIONS.labels(tool, "refused").inc()
            raise Refused(f"role {self.role.name} may not call {tool}")
        refusal = inv.scope.check(tool, {k: str(v) for k, v in args.items()})
        if refusal is not None:
            await inv.emit("warning", agent=self.name, warning="out_of_scope", tool=tool, args=args, message=refusal)
            TOOL_EXECUTIONS.labels(tool, "out_of_scope").inc()
            raise Refused(refusal)
        key = call_key(tool, args)
        status, _, result = await deps.store.call_outcome(inv.id, key)
        if status == "ok":
            return result  # made before this step was re-run: the same answer, no second call
        # A call that failed before is tried again (the step is being re-run; the error may have passed).
        await inv.check()
        if not status:
            used = await deps.store.count_calls(inv.id)
            if used >= int(inv.row.budget["max_tool_calls"]):
                raise Stop("budget_exhausted", f"{used} tool calls: the budget of {inv.row.budget['max_tool_calls']} is spent")
            await deps.store.begin_call(inv.id, key, tool, args, self.name)
        await inv.emit("tool_call", agent=self.name, role=self.role.name, tool=tool, args=args, key=key)
        await self.doing(f"{tool} {_describe(args)}")
        started = time.perf_counter()
        try:
            result = await while_starting(run)
        except RpcError as exc:
            message = f"{exc.code.name}: {exc.message}"
            await deps.store.end_call(inv.id, key, "error", message)
            await inv.emit("tool_result", agent=self.name, tool=tool, key=key, status="error", error=message,
                           ms=round(1000 * (time.perf_counter() - started)))
            TOOL_EXECUTIONS.labels(tool, "error").inc()
            raise
        await deps.store.end_call(inv.id, key, "ok", result=result)
        await inv.emit("tool_result", agent=self.name, tool=tool, key=key, status="ok", ms=round(1000 * (time.perf_counter() - started)),
                       items=len(result) if isinstance(result, list) else 1)
        TOOL_EXECUTIONS.labels(tool, "ok").inc()
        return result


def _describe(args: Mapping[str, Any]) -> str:
    shown = [str(args[k]) for k in ("collector", "target", "entity_id", "query") if k in args]
    return " ".join(shown)[:200]


def now() -> datetime:
    return datetime.now(UTC)
