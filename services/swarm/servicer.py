"""Swarm: multi-agent investigations over the fleet's RPCs, durable on DBOS (services/swarm/workflow.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NatsClient

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.runtime import ServiceRuntime, StartupError
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmServicer
from bev.vocab import Tlp, UnknownTlp
from services.swarm import dag, report, store, workflow
from services.swarm.agents import Deps
from services.swarm.roles import ROLES, AgentRole, Phase, roles_for_phase
from services.swarm.scope import Scope, ScopeError
from services.swarm.settings import Settings, SwarmConfig
from services.swarm.targets import UntypableTarget, infer_target
from services.swarm.wakeups import Wakeups

_PHASE_BY_PROTO = {
    swarm_pb2.PHASE_INGESTION: Phase.INGESTION,
    swarm_pb2.PHASE_HYPOTHESES: Phase.HYPOTHESES,
    swarm_pb2.PHASE_CORRELATION: Phase.CORRELATION,
    swarm_pb2.PHASE_COUNTERFACTUALS: Phase.COUNTERFACTUALS,
    swarm_pb2.PHASE_SYNTHESIS: Phase.SYNTHESIS,
}
_PROTO_BY_PHASE = {phase: proto for proto, phase in _PHASE_BY_PROTO.items()}
MODES = {swarm_pb2.MODE_HIERARCHICAL: "hierarchical", swarm_pb2.MODE_DEMOCRATIC: "democratic",
         swarm_pb2.MODE_HYBRID: "hybrid", swarm_pb2.MODE_AUTONOMOUS: "autonomous",
         swarm_pb2.MODE_UNSPECIFIED: "hybrid"}
_MODE_PROTO = {name: proto for proto, name in MODES.items() if proto}
STATUSES = {swarm_pb2.STATUS_QUEUED: "queued", swarm_pb2.STATUS_RUNNING: "running",
            swarm_pb2.STATUS_COMPLETED: "completed", swarm_pb2.STATUS_FAILED: "failed",
            swarm_pb2.STATUS_CANCELLED: "cancelled", swarm_pb2.STATUS_BUDGET_EXHAUSTED: "budget_exhausted"}
_STATUS_PROTO = {name: proto for proto, name in STATUSES.items()}
CANCEL_GRACE_S = 3.0  # the workflow stops itself between tool calls; past this it is stopped from outside
WATCH_POLL_S = 0.25  # without the bus; with it, watchers are woken by each event (services/swarm/wakeups.py)
WATCH_FALLBACK_POLL_S = 1.0
DONE_GRACE_S = 10.0  # a finished investigation without its `done` event (the writer died between the two)
# While nothing happens, a watcher gets a `heartbeat` (id = the last id sent) this often, so that it
# can tell a quiet investigation from a replica that died mid-stream, and reopen.
WATCH_HEARTBEAT_S = 5.0


def _to_proto(role: AgentRole) -> swarm_pb2.AgentRole:
    return swarm_pb2.AgentRole(name=role.name, description=role.description,
                               phases=[_PROTO_BY_PHASE[p] for p in role.phases], tools=list(role.tools),
                               can_vote=role.can_vote)


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _investigation(row: store.InvestigationRow) -> swarm_pb2.Investigation:
    budget = row.budget
    message = swarm_pb2.Investigation(
        id=row.id, target=row.target, target_type=row.target_type, mode=_MODE_PROTO[row.mode],
        status=_STATUS_PROTO[row.status], progress=row.progress,
        usage=swarm_pb2.Usage(tokens=row.tokens, tool_calls=row.tool_calls, wall_s=round(row.wall_s, 3)),
        budget=swarm_pb2.Budget(max_tool_calls=int(budget["max_tool_calls"]), max_tokens=int(budget["max_tokens"]),
                                max_wall_s=float(budget["max_wall_s"]), max_depth=int(budget["max_depth"])),
        scope=swarm_pb2.Scope(allow=[*Scope.from_dict(row.scope).allow], opsec=bool(row.scope.get("opsec"))),
        tlp=Tlp(row.tlp).to_proto(), error=row.error, seeds=row.seeds, team=row.team,
        report_json=json.dumps(row.report) if row.report is not None else "")
    if row.phase:
        message.phase = _PROTO_BY_PHASE[Phase(row.phase)]
    for field, value in (("created_at", row.created_at), ("started_at", row.started_at),
                         ("finished_at", row.finished_at)):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def _cursor(row: store.InvestigationRow) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), ident
    except (ValueError, UnicodeDecodeError):
        raise RpcError(StatusCode.INVALID_ARGUMENT, "cursor is not one this service gave out") from None


@dataclass(frozen=True)
class Caller:
    """Who asks, from the request's `access` (the gateway sets it from the API key): `team` '' =
    every team (an admin key or another service); `max_tlp` None = any label."""

    team: str
    max_tlp: Tlp | None

    @classmethod
    def of(cls, access: common_pb2.Access) -> Caller:
        try:
            return cls(access.team, Tlp.from_proto(access.max_tlp))
        except UnknownTlp as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"access.max_tlp: {exc}") from None

    def cleared_for(self, tlp: str) -> bool:
        return self.max_tlp is None or Tlp(tlp).rank <= self.max_tlp.rank

    def may_see(self, team: str, tlp: str | None = None) -> bool:
        """A row of `team` labelled `tlp` (None: a row without a label, a workflow)."""
        return (not self.team or team == self.team) and (tlp is None or self.cleared_for(tlp))

    def visibility(self) -> store.Visibility:
        tlps = None if self.max_tlp is None else tuple(t.value for t in Tlp.ordered() if t.rank <= self.max_tlp.rank)
        return store.Visibility(team=self.team or None, tlps=tlps)


@dataclass
class SwarmDeps:
    dsn: str
    collectors: CollectorsClient
    embeddings: EmbeddingsClient
    reasoning: ReasoningClient
    data_dir: Path
    nc: NatsClient | None = None


class Swarm(SwarmServicer):
    def __init__(self, info: InstanceInfo, config: SwarmConfig, deps: SwarmDeps) -> None:
        super().__init__(info)
        self.config = config
        self.swarm_deps = deps
        self.store: store.Store | None = None
        self.engine: workflow.Engine | None = None
        self.wakeups = Wakeups()

    async def start(self) -> None:
        await asyncio.to_thread(store.migrate, self.swarm_deps.dsn)
        self.store = await store.Store.open(self.swarm_deps.dsn)
        d = self.swarm_deps
        self.engine = workflow.Engine(Deps(self.store, d.collectors, d.embeddings, d.reasoning, self.config, self.info,
                                           d.data_dir, d.nc), d.dsn)
        await self.engine.start()
        if d.nc is not None:
            await self.wakeups.start(d.nc)

    async def stopping(self) -> None:
        if self.engine is not None:
            await self.engine.halt()  # before the fleet around it is gone (Engine.halt)

    async def close(self) -> None:
        await self.wakeups.close()
        if self.engine is not None:
            await self.engine.stop()
        if self.store is not None:
            await self.store.close()

    def _store(self) -> store.Store:
        if self.store is None:
            raise RpcError(StatusCode.UNAVAILABLE, "the swarm is starting")
        return self.store

    async def _row(self, investigation_id: str, caller: Caller, *, report_: bool = True) -> store.InvestigationRow:
        """The investigation, if the caller may see it. Another team's, or one above the caller's
        TLP, answers exactly as an unknown id does: the answer must not tell that it exists."""
        row = await self._store().get(investigation_id, report=report_) if investigation_id else None
        if row is None or not caller.may_see(row.team, row.tlp):
            raise RpcError(StatusCode.NOT_FOUND, f"no investigation {investigation_id!r}")
        return row

    async def ListRoles(self, request: swarm_pb2.ListRolesRequest, ctx: CallContext) -> swarm_pb2.ListRolesResponse:
        phase = _PHASE_BY_PROTO.get(request.phase)
        roles = ROLES if phase is None else roles_for_phase(phase)
        return swarm_pb2.ListRolesResponse(roles=[_to_proto(r) for r in roles])

    async def StartInvestigation(self, request: swarm_pb2.StartInvestigationRequest,
                                 ctx: CallContext) -> swarm_pb2.Investigation:
        try:
            target = infer_target(request.target, request.target_type)
            scope = Scope.build(target, list(request.scope.allow))
            for seed in request.seeds:
                if not scope.allows_url(seed):
                    raise ScopeError(f"seed {seed!r} is outside the scope; add its host to scope.allow")
        except (UntypableTarget, ScopeError) as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        defaults = self.config.budget
        given = request.budget
        budget = {"max_tool_calls": given.max_tool_calls or defaults.max_tool_calls,
                  "max_tokens": given.max_tokens or defaults.max_tokens,
                  "max_wall_s": given.max_wall_s or defaults.max_wall_s,
                  "max_depth": min(given.max_depth or defaults.max_depth, 5)}
        scope_data = {**scope.to_dict(), "opsec": request.scope.opsec}
        investigation_id = str(uuid.uuid4())
        tlp = Tlp.from_proto(request.tlp, Tlp.CLEAR)
        caller = Caller.of(request.access)
        if not caller.cleared_for(tlp):
            raise RpcError(StatusCode.PERMISSION_DENIED,
                           f"this key is cleared up to TLP {caller.max_tlp}: it cannot start a TLP {tlp} investigation")
        limit = self.config.max_active_per_team
        if not await self._store().create(id=investigation_id, target=target.value, target_type=target.kind,
                                          stix_type=target.stix_type, mode=MODES[request.mode], budget=budget,
                                          scope=scope_data, seeds=list(request.seeds), tlp=tlp.value,
                                          team=caller.team, max_active=limit):
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED,
                           f"team {caller.team!r} already has {limit} investigations queued or running, its limit "
                           "(swarm.max_active_per_team); start this one when one of them finishes or is cancelled")
        assert self.engine is not None
        await self.engine.submit(investigation_id)
        return _investigation(await self._row(investigation_id, caller))

    async def GetInvestigation(self, request: swarm_pb2.GetInvestigationRequest,
                               ctx: CallContext) -> swarm_pb2.Investigation:
        return _investigation(await self._row(request.id, Caller.of(request.access)))

    async def ListInvestigations(self, request: swarm_pb2.ListInvestigationsRequest,
                                 ctx: CallContext) -> swarm_pb2.ListInvestigationsResponse:
        limit = min(request.limit or 50, 500)
        before = _parse_cursor(request.cursor) if request.cursor else None
        rows = await self._store().page(status=STATUSES.get(request.status, ""), limit=limit + 1, before=before,
                                        visible=Caller.of(request.access).visibility())
        page = rows[:limit]
        return swarm_pb2.ListInvestigationsResponse(
            investigations=[_investigation(r) for r in page],
            next_cursor=_cursor(page[-1]) if len(rows) > limit else "")

    async def CancelInvestigation(self, request: swarm_pb2.CancelInvestigationRequest,
                                  ctx: CallContext) -> swarm_pb2.Investigation:
        caller = Caller.of(request.access)
        row = await self._row(request.id, caller, report_=False)
        if row.finished or not await self._store().request_cancel(row.id):
            return _investigation(await self._row(request.id, caller))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_GRACE_S
        while loop.time() < deadline:
            await asyncio.sleep(0.2)
            row = await self._row(request.id, caller, report_=False)
            if row.finished:
                return _investigation(await self._row(request.id, caller))
        # Still in a long call (a model answer): stop the workflow and close it with what is stored.
        assert self.engine is not None
        await self.engine.cancel(row.id)
        await workflow.finish(row.id, "cancelled", "cancelled by the analyst", {})
        return _investigation(await self._row(request.id, caller))

    async def GetReport(self, request: swarm_pb2.GetReportRequest, ctx: CallContext) -> swarm_pb2.Report:
        row = await self._row(request.id, Caller.of(request.access))
        if row.report is None:
            raise RpcError(StatusCode.FAILED_PRECONDITION, f"investigation {row.id} is {row.status}: no report yet")
        if request.format == swarm_pb2.REPORT_FORMAT_MARKDOWN:
            return swarm_pb2.Report(content=report.to_markdown(row.report), media_type="text/markdown")
        if request.format == swarm_pb2.REPORT_FORMAT_STIX:
            return swarm_pb2.Report(content=report.to_stix(row.report), media_type="application/stix+json")
        return swarm_pb2.Report(content=json.dumps(row.report), media_type="application/json")

    async def WatchInvestigation(self, request: swarm_pb2.WatchInvestigationRequest,
                                 ctx: CallContext) -> AsyncIterator[swarm_pb2.InvestigationEvent]:
        caller = Caller.of(request.access)
        await self._row(request.id, caller, report_=False)
        poll_s = WATCH_FALLBACK_POLL_S if self.wakeups.live else WATCH_POLL_S
        with self.wakeups.watching(request.id) as published:
            async for message in self._watch(request.id, caller, request.after_id, published, poll_s):
                yield message

    async def _watch(self, investigation_id: str, caller: Caller, after: int, published: asyncio.Event,
                     poll_s: float) -> AsyncIterator[swarm_pb2.InvestigationEvent]:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            published.clear()  # before reading: an event published during the read wakes the next wait
            events = await self._store().events(investigation_id, after)
            if events:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= WATCH_HEARTBEAT_S:
                quiet_since = loop.time()
                yield swarm_pb2.InvestigationEvent(id=after, investigation_id=investigation_id, kind="heartbeat")
            for event in events:
                after = event.id
                message = swarm_pb2.InvestigationEvent(id=event.id, investigation_id=event.investigation_id,
                                                       kind=event.kind, data_json=json.dumps(event.data))
                message.at.FromDatetime(event.at)
                yield message
                if event.kind == "done":
                    return
            if not events:
                # The row is closed a moment before its `done` event is written (services/swarm/
                # workflow.finish): a finished investigation's stream waits DONE_GRACE_S for it.
                row = await self._row(investigation_id, caller, report_=False)
                if row.finished and row.finished_at is not None and \
                        (datetime.now(UTC) - row.finished_at).total_seconds() > DONE_GRACE_S:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(published.wait(), poll_s)

    async def GetEvidence(self, request: swarm_pb2.GetEvidenceRequest, ctx: CallContext) -> swarm_pb2.Evidence:
        caller = Caller.of(request.access)
        item = await self._store().get_evidence(request.id) if request.id else None
        # Seen through its investigation (its team, its label) and its own label; otherwise the
        # answer of an unknown id.
        owner = await self._store().get(item.investigation_id, report=False) if item is not None else None
        if item is None or owner is None or not caller.may_see(owner.team, owner.tlp) or \
                not caller.cleared_for(item.tlp):
            raise RpcError(StatusCode.NOT_FOUND, f"no evidence {request.id!r}")
        message = swarm_pb2.Evidence(id=item.id, investigation_id=item.investigation_id, kind=item.kind, uri=item.uri,
                                     collector=item.collector, tlp=Tlp(item.tlp).to_proto(), content=item.content,
                                     document_id=item.document_id, start=item.start, end=item.end)
        message.collected_at.FromDatetime(item.collected_at)
        return message

    async def ListAgents(self, request: swarm_pb2.ListAgentsRequest, ctx: CallContext) -> swarm_pb2.ListAgentsResponse:
        agents = []
        for row in await self._store().agents(Caller.of(request.access).visibility()):
            agent = swarm_pb2.Agent(id=f"{row.investigation_id}/{row.agent}", role=row.role,
                                    investigation_id=row.investigation_id, activity=row.activity, instance=row.instance)
            agent.since.FromDatetime(row.since)
            agents.append(agent)
        return swarm_pb2.ListAgentsResponse(roles=[_to_proto(r) for r in ROLES], agents=agents)


    # -- workflows (services/swarm/dag.py) ---------------------------------------------------------

    async def _workflow_row(self, workflow_id: str, caller: Caller) -> store.WorkflowRow:
        """The workflow, if the caller may see it; another team's answers as an unknown id does."""
        row = await self._store().get_workflow(workflow_id) if workflow_id else None
        if row is None or not caller.may_see(row.team):
            raise RpcError(StatusCode.NOT_FOUND, f"no workflow {workflow_id!r}")
        return row

    async def SubmitWorkflow(self, request: swarm_pb2.SubmitWorkflowRequest, ctx: CallContext) -> swarm_pb2.Workflow:
        try:
            spec = dag.parse(request.spec_json)
        except dag.InvalidWorkflow as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if self.engine is None:
            raise RpcError(StatusCode.UNAVAILABLE, "the swarm is starting")
        caller = Caller.of(request.access)
        workflow_id = str(uuid.uuid4())
        await self._store().create_workflow(id=workflow_id, name=spec.name, spec=spec.model_dump(mode="json"),
                                            steps=dag.initial_states(spec), team=caller.team)
        await dag.submit(workflow_id)
        return _workflow(await self._workflow_row(workflow_id, caller))

    async def GetWorkflow(self, request: swarm_pb2.GetWorkflowRequest, ctx: CallContext) -> swarm_pb2.Workflow:
        return _workflow(await self._workflow_row(request.id, Caller.of(request.access)))

    async def ListWorkflows(self, request: swarm_pb2.ListWorkflowsRequest,
                            ctx: CallContext) -> swarm_pb2.ListWorkflowsResponse:
        limit = min(request.limit or 50, 500)
        before = _parse_cursor(request.cursor) if request.cursor else None
        rows = await self._store().page_workflows(status=STATUSES.get(request.status, ""), limit=limit + 1,
                                                  before=before, visible=Caller.of(request.access).visibility())
        page = rows[:limit]
        last = page[-1] if page else None
        return swarm_pb2.ListWorkflowsResponse(
            workflows=[_workflow(r, full=False) for r in page],
            next_cursor=base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode()
            if last is not None and len(rows) > limit else "")

    async def CancelWorkflow(self, request: swarm_pb2.CancelWorkflowRequest, ctx: CallContext) -> swarm_pb2.Workflow:
        caller = Caller.of(request.access)
        row = await self._workflow_row(request.id, caller)
        if row.finished or not await self._store().request_workflow_cancel(row.id):
            row = await self._workflow_row(request.id, caller)
            if row.status != "cancelled":
                raise RpcError(StatusCode.FAILED_PRECONDITION, f"workflow {row.id} has {row.status}: nothing to cancel")
            return _workflow(row)
        if row.status == "running":  # it stops itself before its next step
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CANCEL_GRACE_S
            while loop.time() < deadline:
                await asyncio.sleep(0.2)
                row = await self._workflow_row(request.id, caller)
                if row.finished:
                    return _workflow(row)
        # Queued, or in a long step (a model answer): stop the DBOS workflow and close the row here.
        await dag.stop(row.id)
        await dag.conclude(row.id)
        return _workflow(await self._workflow_row(request.id, caller))


def _workflow(row: store.WorkflowRow, *, full: bool = True) -> swarm_pb2.Workflow:
    """A workflow as the API shows it; `full`: with the spec and each step's output."""
    message = swarm_pb2.Workflow(id=row.id, name=row.name, status=_STATUS_PROTO[row.status], progress=row.progress,
                                 error=row.error, cancel_requested=row.cancel_requested, team=row.team,
                                 spec_json=json.dumps(row.spec) if full else "")
    for step, state in dag.steps_in_order(row):
        output = state.get("output")
        item = swarm_pb2.WorkflowStep(
            id=str(step.get("id", "")), type=str(step.get("type", "")), depends_on=list(step.get("depends_on", [])),
            status=str(state.get("status", "pending")), error=str(state.get("error") or ""),
            output_json=json.dumps(output) if full and state.get("status") == "completed" else "")
        for field in ("started_at", "finished_at"):
            if state.get(field):
                getattr(item, field).FromDatetime(datetime.fromisoformat(str(state[field])))
        message.steps.append(item)
    for field, value in (("created_at", row.created_at), ("started_at", row.started_at),
                         ("finished_at", row.finished_at)):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


async def assemble(info: InstanceInfo, config: SwarmConfig, deps: SwarmDeps) -> Swarm:
    return Swarm(info, config, deps)


async def build(runtime: ServiceRuntime[Settings]) -> Swarm:
    """Reads the database's DSN from Vault; the clients go over the service's NATS connection."""
    dsn = (await asyncio.to_thread(runtime.secrets.read, "postgres")).get("dsn", "")
    if not dsn:
        raise StartupError("Vault secret 'postgres' has no dsn; the swarm keeps investigations there")
    nc = runtime.nc
    return await assemble(runtime.info, runtime.settings.swarm, SwarmDeps(
        dsn, CollectorsClient.over_nats(nc), EmbeddingsClient.over_nats(nc), ReasoningClient.over_nats(nc),
        runtime.settings.data_dir, nc))
