"""An investigation as a DBOS durable workflow (docs/decisions/0010-durable-investigations.md).

Every unit of work is a DBOS step checkpointed in PostgreSQL: the plan, each ingestion round, each
agent's proposal and ranking, correlation, counterfactuals, synthesis, the report. A replica killed
mid-investigation loses at most the step it was in; another replica (or the restarted one) recovers
the workflow and carries on from the last completed step, and that step's tool calls are reused
from `swarm.tool_calls` rather than made again. Investigations are started on a DBOS queue that
every replica polls, so any number of replicas on any node share them.

DBOS is one instance per process, so the steps reach the service's clients and store through the
module's `DEPS`, set once by `Engine.start`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from dbos import DBOS, SetWorkflowID

from bev.migrations import sqlalchemy_url
from bev.telemetry import get_logger
from services.swarm import deliberation, report
from services.swarm.agents import ANALYSES, DURATION, LIVE_AGENTS, TOKENS, Deps, Investigation, Stop
from services.swarm.ingest import (
    Names,
    Task,
    corpus_excerpts,
    initial_tasks,
    injection_excerpts,
    known_names,
    run_task,
)
from services.swarm.roles import Phase
from services.swarm.store import EvidenceRow, InvestigationRow
from services.swarm.voting import Consensus

log = get_logger(__name__)

QUEUE = "bev-investigations"
APP = "bev-swarm"
APP_VERSION = "bev-swarm-1"  # every replica must agree, or recovery skips the others' workflows
PROGRESS = {Phase.INGESTION: 0.05, Phase.HYPOTHESES: 0.5, Phase.CORRELATION: 0.75,
            Phase.COUNTERFACTUALS: 0.85, Phase.SYNTHESIS: 0.92}

DEPS: Deps | None = None
RUNNING: set[asyncio.Task[Any]] = set()  # the workflows this replica is running now
HALTED = False  # set by Engine.halt: this replica is stopping and starts no workflow step


def deps() -> Deps:
    if DEPS is None:
        raise RuntimeError("the swarm engine has not started")
    return DEPS


async def _load(investigation_id: str) -> Investigation:
    return await Investigation.load(deps(), investigation_id)


async def _phase(inv: Investigation, phase: Phase) -> None:
    await inv.deps.store.set_phase(inv.id, phase.value, PROGRESS[phase])
    await inv.emit("phase", phase=phase.value, progress=PROGRESS[phase])


def _stopped(exc: Stop) -> dict[str, Any]:
    return {"stop": exc.status, "reason": exc.reason}


# -- steps ----------------------------------------------------------------------------------------

@DBOS.step(name="swarm.begin")
async def begin(investigation_id: str) -> dict[str, Any]:
    store = deps().store
    await store.start(investigation_id)
    inv = await _load(investigation_id)
    if inv.row.finished:
        return {"finished": True, "status": inv.row.status}
    await _phase(inv, Phase.INGESTION)
    return {"finished": False, "mode": inv.row.mode, "stix_type": inv.row.stix_type, "target": inv.row.target}


@DBOS.step(name="swarm.plan")
async def plan(investigation_id: str) -> list[dict[str, Any]]:
    inv = await _load(investigation_id)
    # The graph lookup of the target waits for round 1: what round 0 collects is in the graph by then.
    tasks = [t for t in initial_tasks(inv.row.stix_type, inv.row.target, inv.row.seeds) if t.kind != "neighborhood"]
    await inv.agent("leader").doing("planning from the playbook")
    await inv.emit("plan", agent="leader", playbook=inv.row.stix_type,
                   tasks=[{"collector": t.collector or "graph", "target": t.target, "reason": t.reason} for t in tasks])
    return [t.to_dict() for t in tasks]


@DBOS.step(name="swarm.ingest_round")
async def ingest_round(investigation_id: str, round_no: int, tasks: list[dict[str, Any]],
                       workers: list[str]) -> dict[str, Any]:
    """One round of pivots, run in parallel by the workers; returns the next round's tasks."""
    inv = await _load(investigation_id)
    config = inv.deps.config
    names = Names(inv, await known_names(inv))
    max_depth = int(inv.row.budget["max_depth"])
    gate = asyncio.Semaphore(config.tool_parallelism)
    evidence: list[str] = []
    follow: list[Task] = []
    stop: list[Stop] = []

    async def work(n: int, task: Task) -> None:
        agent = inv.agent(workers[n % len(workers)], "worker")
        async with gate:
            if stop:
                return
            try:
                outcome = await run_task(agent, task, names, max_depth)
            except Stop as exc:
                stop.append(exc)
                return
        evidence.extend(outcome.evidence)
        follow.extend(outcome.follow_ups)
        if outcome.error:
            await inv.emit("warning", agent=agent.name, warning="tool_error",
                           message=f"{task.collector or 'graph'} {task.target}: {outcome.error}")

    try:
        await inv.check()
        await asyncio.gather(*(work(n, Task.from_dict(t)) for n, t in enumerate(tasks)))
    except Stop as exc:
        stop.append(exc)
    await inv.deps.store.set_scope(inv.id, inv.scope.to_dict())  # hosts in-scope pages named
    for name in set(workers):
        await inv.agent(name, "worker").doing(f"round {round_no} done")
    await inv.deps.store.set_phase(inv.id, Phase.INGESTION.value, min(0.45, 0.05 + 0.1 * (round_no + 1)))
    if stop:
        return _stopped(stop[0])
    return {"stop": "", "evidence": len(evidence), "next": [t.to_dict() for t in follow]}


@DBOS.step(name="swarm.context")
async def gather_context(investigation_id: str) -> dict[str, Any]:
    """Excerpts of the investigation's stored pages (corpus search), and the monitor's injection scan."""
    inv = await _load(investigation_id)
    await _phase(inv, Phase.HYPOTHESES)
    evidence = await inv.deps.store.evidence(inv.id)
    documents = {str(e.data.get("entity", {}).get("properties", {}).get("corpus_document_id", ""))
                 for e in evidence} - {""}
    analyst = inv.agent("analyst")
    monitor = inv.agent("monitor")
    # The monitor reads every page the investigation stored (by pattern, not with a model) for text
    # aimed at an AI reader; each hit becomes an excerpt evidence item the warning cites. Searches and
    # reads run at once: this is time before the first model call, which nothing else overlaps.
    await monitor.doing("scanning collected text for injected instructions")
    stops: list[Stop] = []
    try:
        async with asyncio.TaskGroup() as group:  # a Stop (budget, cancel) cancels the rest
            for query in (inv.row.target, f"{inv.row.target} malware payment infrastructure"):
                group.create_task(corpus_excerpts(analyst, query, documents))
            for document_id in sorted(documents):
                group.create_task(injection_excerpts(monitor, document_id))
    except* Stop as group_stops:
        stops = [exc for exc in group_stops.exceptions if isinstance(exc, Stop)]
    if stops:
        return _stopped(stops[0])
    evidence = await inv.deps.store.evidence(inv.id)
    for warning in deliberation.injection_warnings(evidence):
        await inv.emit("warning", agent="monitor", warning=warning["kind"], evidence=warning["evidence"],
                       message=warning["message"])
    return {"stop": "", "evidence": len(evidence), "specialists": deliberation.specialists_for(evidence)}


@DBOS.step(name="swarm.propose")
async def propose(investigation_id: str, agent_name: str) -> dict[str, Any]:
    inv = await _load(investigation_id)
    config = inv.deps.config
    evidence = await _analysable(inv)
    view = deliberation.view_for(agent_name, evidence, config.analysis_documents)
    try:
        hypotheses = await deliberation.propose(inv.agent(agent_name), view, config.max_hypotheses, config.tier)
    except Stop as exc:
        return _stopped(exc)
    return {"stop": "", "hypotheses": hypotheses}


@DBOS.step(name="swarm.rank")
async def rank(investigation_id: str, agent_name: str, hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
    inv = await _load(investigation_id)
    try:
        ranking = await deliberation.rank(inv.agent(agent_name), hypotheses, inv.deps.config.tier)
    except Stop as exc:
        return _stopped(exc)
    return {"stop": "", "ranking": ranking}


@DBOS.step(name="swarm.switch")
async def switch(investigation_id: str, reason: str) -> None:
    inv = await _load(investigation_id)
    await inv.emit("mode_switch", agent="leader", **{"from": "hierarchical", "to": "democratic", "reason": reason})


@DBOS.step(name="swarm.consensus")
async def record_consensus(investigation_id: str, consensus: dict[str, Any]) -> None:
    inv = await _load(investigation_id)
    await inv.emit("consensus", **consensus)


@DBOS.step(name="swarm.correlate")
async def correlate(investigation_id: str, hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
    """Each hypothesis against the corpus and the graph: evidence that names what its quotes name is
    added to its support, with the named value as the quote (checked again at the end)."""
    inv = await _load(investigation_id)
    await _phase(inv, Phase.CORRELATION)
    evidence = await inv.deps.store.evidence(inv.id)
    values = sorted({e["value"] for item in evidence for e in _entities(item) if len(str(e["value"])) >= 6},
                    key=len, reverse=True)
    out = []
    for hypothesis in hypotheses:
        quoted = " ".join(q["text"] for q in hypothesis["quotes"]) + " " + hypothesis["statement"]
        named = [v for v in values if v in quoted][:5]
        extra = [{"evidence": item.id, "text": value} for value in named for item in evidence
                 if item.id not in hypothesis["supporting"] and value in item.content][:6]
        supporting = sorted(set(hypothesis["supporting"]) | {q["evidence"] for q in extra})
        out.append({**hypothesis, "supporting": supporting, "quotes": hypothesis["quotes"] + extra})
        if extra:
            await inv.emit("hypothesis", agent="analyst", id=hypothesis["id"], statement=hypothesis["statement"],
                           confidence=hypothesis["confidence"], supporting=supporting, correlated=len(extra))
    return {"hypotheses": out}


@DBOS.step(name="swarm.counterfactual")
async def counterfactuals(investigation_id: str, hypotheses: list[dict[str, Any]], winner: str | None) -> dict[str, Any]:
    inv = await _load(investigation_id)
    await _phase(inv, Phase.COUNTERFACTUALS)
    out = []
    try:
        for hypothesis in hypotheses:
            if not hypothesis["counterfactual"] and hypothesis["id"] == winner:
                condition = await deliberation.counterfactual(inv.agent("counterfactual"), hypothesis,
                                                              inv.deps.config.tier)
                hypothesis = {**hypothesis, "counterfactual": condition}
            out.append(hypothesis)
    except Stop as exc:
        return _stopped(exc)
    return {"stop": "", "hypotheses": out}


@DBOS.step(name="swarm.synthesize")
async def synthesize(investigation_id: str, hypotheses: list[dict[str, Any]], winner: str | None) -> dict[str, Any]:
    inv = await _load(investigation_id)
    await _phase(inv, Phase.SYNTHESIS)
    best = next((h for h in hypotheses if h["id"] == winner), None)
    facts = _facts(inv.row, await inv.deps.store.evidence(inv.id), best)
    try:
        prose = await deliberation.summarize(inv.agent("synthesizer"), facts, inv.deps.config.tier)
    except Stop as exc:
        return {**_stopped(exc), "summary": facts}
    return {"stop": "", "summary": facts + (f"\n\n{prose}" if prose else "")}


@DBOS.step(name="swarm.finish")
async def finish(investigation_id: str, status: str, reason: str, state: dict[str, Any]) -> str:
    """The report from what is stored, verified claim by claim; the investigation closes once."""
    d = deps()
    row = await d.store.get(investigation_id, report=False)
    assert row is not None
    if row.finished:
        return row.status
    if status == "completed" and row.cancel_requested:
        status, reason = "cancelled", "cancelled by the analyst"
    evidence = await d.store.evidence(investigation_id)
    warnings = [_warning(w) for w in await d.store.warnings(investigation_id)]
    if reason and status != "completed":
        warnings.append({"kind": "budget" if status == "budget_exhausted" else "stopped", "message": reason,
                         "evidence": None})
    calls = await d.store.count_calls(investigation_id)
    draft = build_report(row, status, evidence, state, warnings, calls)
    final = report.verify(draft, {e.id: e.content for e in evidence})
    report.validate(final)
    if await d.store.finish(investigation_id, status, final, reason if status == "failed" else ""):
        await d.emit(investigation_id, "done", {"status": status, "reason": reason,
                                                "citation_integrity": final["citation_integrity"]})
        ANALYSES.labels(row.mode, status).inc()
        DURATION.labels(row.mode).observe(row.wall_s)
        TOKENS.labels(row.mode).observe(row.tokens)
    await d.store.clear_agents(investigation_id)
    return status


# -- the workflow ---------------------------------------------------------------------------------

@DBOS.step(name="swarm.fail")
async def fail(investigation_id: str, error: str) -> str:
    """A bug or an unrecoverable error: the investigation ends as failed, with the reason, and a
    report of what it had stored (still verified)."""
    log.error("investigation failed", investigation=investigation_id, error=error)
    d = deps()
    row = await d.store.get(investigation_id, report=False)
    if row is None or row.finished:
        return row.status if row else "failed"
    evidence = await d.store.evidence(investigation_id)
    warnings = [{"kind": "error", "message": error, "evidence": None}]
    draft = build_report(row, "failed", evidence, {}, warnings, await d.store.count_calls(investigation_id))
    try:
        final: dict[str, Any] | None = report.verify(draft, {e.id: e.content for e in evidence})
    except report.ReportInvalid:
        final = None
    if await d.store.finish(investigation_id, "failed", final, error):
        await d.emit(investigation_id, "error", {"message": error})
        await d.emit(investigation_id, "done", {"status": "failed", "reason": error})
        ANALYSES.labels(row.mode, "failed").inc()
    await d.store.clear_agents(investigation_id)
    return "failed"


@contextlib.contextmanager
def running_here() -> Iterator[None]:
    """Marks the current task as a workflow this replica runs, so that `Engine.halt` can cancel it
    before the bus and the database close under it (a cancelled workflow stays PENDING in DBOS and
    is resumed elsewhere; one that met a closed connection would have ended as failed). A workflow
    the queue hands a halted replica is cancelled before its first step."""
    task = asyncio.current_task()
    if task is not None:
        RUNNING.add(task)
        if HALTED:
            task.cancel()
    try:
        yield
    finally:
        if task is not None:
            RUNNING.discard(task)


@DBOS.workflow(name="swarm.investigate")
async def investigate(investigation_id: str) -> str:
    with running_here():
        try:
            return await _investigate(investigation_id)
        except Exception as exc:  # a cancellation is not an Exception (DBOSWorkflowCancelledError)
            return str(await fail(investigation_id, f"{type(exc).__name__}: {exc}"[:1000]))


async def _investigate(investigation_id: str) -> str:
    start = await begin(investigation_id)
    if start["finished"]:
        return str(start["status"])
    state: dict[str, Any] = {"hypotheses": [], "consensus": None, "mode_switches": [], "summary": ""}
    stopped = await _ingestion(investigation_id, start["mode"], start["stix_type"], start["target"])
    if not stopped:
        stopped = await _deliberation(investigation_id, start["mode"], state)
    status = stopped.get("stop") or "completed"
    return str(await finish(investigation_id, status, stopped.get("reason", ""), state))


async def _ingestion(investigation_id: str, mode: str, start_type: str, target: str) -> dict[str, Any]:
    """Hierarchical modes: the leader's plan, breadth first by depth, run by a pool of workers.
    Autonomous: the same pivots as a blackboard of open questions that three workers claim in turn,
    until quiescence (rounds that add no question and no evidence) or the budget."""
    tasks = await plan(investigation_id)
    workers = ["worker-1", "worker-2", "worker-3"] if mode == "autonomous" else ["worker"]
    done: set[tuple[str, str, str]] = set()
    idle = 0
    quiescence = deps().config.quiescence_rounds
    for round_no in range(50):
        fresh = [t for t in tasks if _key(t) not in done]
        fresh = list({_key(t): t for t in fresh}.values())
        if not fresh:
            break
        done |= {_key(t) for t in fresh}
        out = await ingest_round(investigation_id, round_no, fresh, workers)
        if out["stop"]:
            return out
        tasks = out["next"]
        if round_no == 0:
            tasks.append(Task("neighborhood", start_type, target, 0, reason="what the graph holds about the target").to_dict())
        idle = idle + 1 if not out["evidence"] and not tasks else 0
        if mode == "autonomous" and idle >= quiescence:
            break
    return {}


def _key(task: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(task["kind"]), str(task["collector"]), str(task["target"]))


async def _deliberation(investigation_id: str, mode: str, state: dict[str, Any]) -> dict[str, Any]:
    context = await gather_context(investigation_id)
    if context["stop"]:
        return context
    config = deps().config
    specialists: list[str] = context["specialists"]
    democratic = mode in ("democratic", "autonomous")
    # Democratic and autonomous: at least three agents propose independently; hierarchical and
    # hybrid: the leader assigns the specialists the evidence calls for.
    proposers = (["analyst", "skeptic", *specialists] if democratic else specialists)[:5]
    hypotheses: list[dict[str, Any]] = []
    for name in proposers:
        out = await propose(investigation_id, name)
        if out["stop"]:
            return out
        hypotheses += out["hypotheses"]
    vote_reason = ""
    if mode == "hybrid":
        vote_reason = deliberation.needs_vote(hypotheses, config.hybrid_min_confidence, config.hybrid_conflict_margin)
        if vote_reason:
            await switch(investigation_id, vote_reason)
            state["mode_switches"].append({"from": "hierarchical", "to": "democratic", "reason": vote_reason})
    if democratic or vote_reason:
        voters = list(dict.fromkeys([*proposers, "analyst", "skeptic"]))[:5]
        rankings: dict[str, list[str]] = {}
        for name in voters:
            out = await rank(investigation_id, name, hypotheses)
            if out["stop"]:
                return out
            rankings[name] = out["ranking"]
        consensus = deliberation.vote(rankings, hypotheses) if hypotheses else None
    else:
        consensus = deliberation.leader_choice(hypotheses) if hypotheses else None
    summary = _consensus_dict(consensus)
    await record_consensus(investigation_id, summary)
    state["consensus"] = summary
    hypotheses = _with_votes(hypotheses, summary)
    hypotheses = (await correlate(investigation_id, hypotheses))["hypotheses"]
    state["hypotheses"] = hypotheses
    out = await counterfactuals(investigation_id, hypotheses, summary["winner"])
    if out["stop"]:
        return out
    state["hypotheses"] = hypotheses = out["hypotheses"]
    out = await synthesize(investigation_id, hypotheses, summary["winner"])
    state["summary"] = out["summary"]
    return out if out["stop"] else {}


def _consensus_dict(consensus: Consensus | None) -> dict[str, Any]:
    if consensus is None:
        return {"rule": "leader", "winner": None, "scores": {}, "rankings": {}, "dissent": []}
    dissent = [{"agent": agent, "preferred": top, "reason": f"{agent} ranked {top} first"}
               for agent, top in consensus.dissent()]
    return {"rule": consensus.rule, "winner": consensus.winner, "scores": dict(consensus.scores),
            "rankings": {k: list(v) for k, v in consensus.rankings.items()}, "dissent": dissent}


def _with_votes(hypotheses: list[dict[str, Any]], consensus: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for hypothesis in hypotheses:
        votes = [{"agent": agent, "rank": ranking.index(hypothesis["id"]) + 1}
                 for agent, ranking in consensus["rankings"].items() if hypothesis["id"] in ranking]
        out.append({**hypothesis, "votes": votes})
    return out


# -- the report -----------------------------------------------------------------------------------

def _entities(item: EvidenceRow) -> list[dict[str, Any]]:
    if "entity" in item.data:
        return [item.data["entity"]]
    return list(item.data.get("entities", []))


async def _analysable(inv: Investigation) -> list[EvidenceRow]:
    return [e for e in await inv.deps.store.evidence(inv.id) if e.content.strip()]


def _facts(row: InvestigationRow, evidence: list[EvidenceRow], best: Mapping[str, Any] | None) -> str:
    entities = {(e["type"], e["value"]) for item in evidence for e in _entities(item)}
    by_type: dict[str, int] = {}
    for kind, _ in entities:
        by_type[kind] = by_type.get(kind, 0) + 1
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(by_type.items(), key=lambda kv: -kv[1]))
    lines = [f"Investigation of {row.stix_type} {row.target} ({row.mode} mode): {len(evidence)} evidence items, "
             f"{len(entities)} entities ({counts})."]
    if best is not None:
        lines.append(f"Consensus hypothesis ({best['confidence']:.2f}): {best['statement']}")
    return "\n".join(lines)


def _warning(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": str(data.get("warning", "warning")), "message": str(data.get("message", "")),
            "evidence": data.get("evidence")}


def build_report(row: InvestigationRow, status: str, evidence: list[EvidenceRow], state: Mapping[str, Any],
                 warnings: list[dict[str, Any]], tool_calls: int) -> dict[str, Any]:
    names: dict[str, tuple[str, str]] = {}
    entities: dict[tuple[str, str], dict[str, Any]] = {}
    for item in evidence:
        for e in _entities(item):
            names[e["id"]] = (e["type"], e["value"])
            entry = entities.setdefault((e["type"], e["value"]), {
                "id": e["id"], "type": e["type"], "value": e["value"], "confidence": 0, "evidence": []})
            entry["confidence"] = max(entry["confidence"], int(item.data.get("confidence") or 50))
            if item.id not in entry["evidence"]:
                entry["evidence"].append(item.id)
    relationships: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in evidence:
        for r in item.data.get("relations", []):
            if r["source_id"] not in names or r["target_id"] not in names:
                continue
            source, target = names[r["source_id"]][1], names[r["target_id"]][1]
            entry = relationships.setdefault((source, r["type"], target), {
                "source": source, "target": target, "type": r["type"], "confidence": 0, "evidence": []})
            entry["confidence"] = max(entry["confidence"], int(r.get("confidence") or 50))
            if item.id not in entry["evidence"]:
                entry["evidence"].append(item.id)
    consensus = state.get("consensus") or {"rule": "leader", "winner": None, "scores": {}, "rankings": {},
                                           "dissent": []}
    return {
        "investigation": {"id": row.id, "target": row.target, "target_type": row.target_type, "mode": row.mode,
                          "status": status, "tlp": row.tlp, "created_at": row.created_at.isoformat(),
                          "finished_at": None},
        "summary": state.get("summary") or _facts(row, evidence, None),
        "entities": list(entities.values()),
        "relationships": list(relationships.values()),
        "hypotheses": list(state.get("hypotheses") or []),
        "consensus": {k: consensus[k] for k in ("rule", "winner", "scores", "rankings")},
        "dissent": list(consensus.get("dissent", [])),
        "mode_switches": list(state.get("mode_switches") or []),
        "evidence": [{"id": e.id, "kind": e.kind, "uri": e.uri, "collector": e.collector,
                      "collected_at": e.collected_at.isoformat(), "tlp": e.tlp, "excerpt": e.content[:400]}
                     for e in evidence],
        "warnings": warnings,
        "unsupported": [],
        "usage": {"tokens": row.tokens, "tool_calls": tool_calls, "wall_s": round(row.wall_s, 3)},
        "citation_integrity": 1.0,
    }


# -- the engine -----------------------------------------------------------------------------------

class Engine:
    """DBOS in this process: launched on the service's event loop (so workflows run there), its queue
    shared with every replica, and an orphan sweep that resumes the work of replicas that died."""

    def __init__(self, deps_: Deps, dsn: str) -> None:
        self.deps = deps_
        self.dsn = dsn
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        global DEPS
        DEPS = self.deps
        config = self.deps.config
        DBOS(config={"name": APP, "system_database_url": sqlalchemy_url(self.dsn),
                     "executor_id": self.deps.info.instance, "application_version": APP_VERSION,
                     "log_level": "WARNING", "notification_listener_polling_interval_sec": 0.2})
        DBOS.launch()  # on this loop: queued workflows run on it
        await DBOS.register_queue_async(QUEUE, worker_concurrency=config.concurrency,
                                        polling_interval_sec=config.queue_poll_s)
        await self.deps.store.heartbeat(self.deps.info.instance, self.deps.info.node)
        self._tasks = [asyncio.create_task(self._heartbeat(), name="swarm-heartbeat"),
                       asyncio.create_task(self._sweep(), name="swarm-orphans")]

    async def halt(self) -> None:
        """Cancel the workflows running here, at once, when the process is told to stop.

        The rest of the fleet stops at the same moment. A step that went on would meet collectors,
        models and stores going away, record those failures as its outcome and be checkpointed: a
        fleet restart would lose the pivots that step should have found (the evidence's link to a
        file, say). Cancelled, the step is not checkpointed; the workflow stays PENDING and is
        resumed after the restart from its last completed step, reusing the step's finished calls."""
        global HALTED
        HALTED = True
        running = list(RUNNING)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def stop(self) -> None:
        global DEPS, HALTED
        await self.halt()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deps.store.forget_replica(self.deps.info.instance)
        await self.deps.close()
        await asyncio.to_thread(DBOS.destroy, workflow_completion_timeout_sec=0)
        # DBOS made its thread pool this loop's default executor and has just shut it down; give the
        # loop a live one (in the service the loop ends next, but a test's loop goes on).
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor())
        DEPS = None
        HALTED = False  # DBOS is one per process: a test may start the engine again

    async def submit(self, investigation_id: str) -> None:
        queue = await DBOS.retrieve_queue_async(QUEUE)
        assert queue is not None
        with SetWorkflowID(investigation_id):
            await queue.enqueue_async(investigate, investigation_id)

    async def cancel(self, investigation_id: str) -> None:
        """Hard stop of the workflow (it may be in a long model call); `finish` is run here instead."""
        await DBOS.cancel_workflow_async(investigation_id)

    async def _heartbeat(self) -> None:
        info = self.deps.info
        while True:
            await asyncio.sleep(self.deps.config.heartbeat_s)
            try:
                await self.deps.store.heartbeat(info.instance, info.node)
                LIVE_AGENTS.set(len([a for a in await self.deps.store.agents() if a.instance == info.instance]))
            except Exception as exc:  # the database may be restarting; try again next beat
                log.warning("heartbeat failed", error=str(exc) or type(exc).__name__)

    async def _sweep(self) -> None:
        """Resume the workflows of executors (replicas) whose heartbeat stopped. DBOS re-enqueues
        them, and its queue's atomic dequeue lets exactly one replica take each."""
        config = self.deps.config
        while True:
            await asyncio.sleep(config.orphan_after_s / 2)
            try:
                live = await self.deps.store.live_replicas(config.orphan_after_s)
                pending = await DBOS.list_workflows_async(status="PENDING", name=["swarm.investigate", "swarm.dag"],
                                                         load_input=False, load_output=False)
                orphans = {w.executor_id for w in pending if w.executor_id and w.executor_id not in live}
                for executor in sorted(orphans):
                    log.info("resuming investigations of a silent replica", executor=executor)
                    await asyncio.to_thread(DBOS._recover_pending_workflows, [executor])
            except Exception as exc:  # try again next sweep
                log.warning("orphan sweep failed", error=str(exc) or type(exc).__name__)
