"""The swarm's PostgreSQL store, against a real server: each test migrates a fresh database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from services.swarm import store as swarm_store
from services.swarm.scope import Scope
from services.swarm.store import EvidenceRow, Store, Visibility, call_key, evidence_id
from services.swarm.targets import infer_target

BUDGET = {"max_wall_s": 600, "max_tokens": 50_000, "max_tool_calls": 40, "max_depth": 2}


@pytest.fixture
def dsn(fresh_database: Callable[[], str]) -> str:
    dsn = fresh_database()
    assert swarm_store.migrate(dsn) == "0003"
    return dsn


@pytest_asyncio.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    opened = await Store.open(dsn, max_size=4)
    try:
        yield opened
    finally:
        await opened.close()


async def create(store: Store, id: str, target: str = "example.com") -> None:
    await store.create(id=id, target=target, target_type="domain", stix_type="domain-name", mode="hybrid",
                       budget=BUDGET, scope=Scope.build(infer_target(target), []).to_dict(),
                       seeds=["https://example.com/seed"], tlp="amber")


def item(investigation_id: str, key: str, content: str = "web observed url https://example.com/") -> EvidenceRow:
    return EvidenceRow(id=evidence_id(investigation_id, "observation", key), investigation_id=investigation_id,
                       kind="observation", uri="https://example.com/", collector="web",
                       collected_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC), tlp="clear", content=content,
                       data={"entity": {"id": f"url--{key}", "type": "url", "value": "https://example.com/"}})


def test_migrate_is_idempotent(dsn: str) -> None:
    assert swarm_store.migrate(dsn) == "0003"


def test_keys_are_deterministic() -> None:
    assert evidence_id("inv-1", "observation", "obs-1") == evidence_id("inv-1", "observation", "obs-1")
    assert evidence_id("inv-1", "observation", "obs-1").startswith("ev-")
    assert evidence_id("inv-1", "observation", "obs-1") != evidence_id("inv-2", "observation", "obs-1")
    assert evidence_id("inv-1", "observation", "obs-1") != evidence_id("inv-1", "graph", "obs-1")
    assert call_key("collectors.Collect", {"a": 1, "b": "x"}) == call_key("collectors.Collect", {"b": "x", "a": 1})
    assert call_key("collectors.Collect", {"a": 1}) != call_key("collectors.Collect", {"a": 2})
    assert call_key("collectors.Collect", {"a": 1}) != call_key("reasoning.Chat", {"a": 1})


async def test_create_and_get(store: Store) -> None:
    await create(store, "inv-create")
    row = await store.get("inv-create")
    assert row is not None
    assert (row.id, row.target, row.target_type, row.stix_type, row.mode) == (
        "inv-create", "example.com", "domain", "domain-name", "hybrid")
    assert (row.status, row.phase, row.progress, row.tokens, row.tool_calls) == ("queued", "", 0.0, 0, 0)
    assert row.budget == BUDGET
    assert Scope.from_dict(row.scope).domains == ("example.com",)
    assert row.seeds == ["https://example.com/seed"]
    assert row.tlp == "amber"
    assert not row.cancel_requested and not row.finished and row.error == "" and row.report is None
    assert row.started_at is None and row.finished_at is None and row.wall_s == 0.0
    assert await store.get("no-such-investigation") is None
    assert await store.unfinished() == ["inv-create"]


async def test_start_phase_scope_and_tokens(store: Store) -> None:
    await create(store, "inv-run")
    await store.start("inv-run")
    await store.set_phase("inv-run", "ingest", 0.4)
    await store.set_phase("inv-run", "ingest", 0.2)  # progress never goes back
    widened = Scope.build(infer_target("example.com"), [])
    assert widened.widen("cdn.other.net", "named by https://example.com/")
    await store.set_scope("inv-run", widened.to_dict())
    assert await store.add_tokens("inv-run", 120) == 120
    assert await store.add_tokens("inv-run", 30) == 150
    assert await store.add_tokens("no-such-investigation", 30) == 0
    row = await store.get("inv-run")
    assert row is not None
    assert (row.status, row.phase, row.progress, row.tokens) == ("running", "ingest", 0.4, 150)
    assert row.started_at is not None and row.finished_at is None
    assert Scope.from_dict(row.scope).hosts == {"cdn.other.net": "named by https://example.com/"}


async def test_evidence_is_stored_once(store: Store) -> None:
    await create(store, "inv-ev")
    await create(store, "inv-other")
    first, second, third = item("inv-ev", "a"), item("inv-ev", "b"), item("inv-ev", "c", "dns observed ...")
    assert await store.add_evidence([first, second]) == [first.id, second.id]
    assert await store.add_evidence([first, second]) == []  # a re-run step stores nothing twice
    assert await store.add_evidence([second, third]) == [third.id]
    await store.add_evidence([item("inv-other", "a")])
    stored = await store.evidence("inv-ev")
    assert [e.id for e in stored] == [first.id, second.id, third.id]
    assert stored[0] == first  # every field round-trips, data included
    assert await store.get_evidence(third.id) == third
    assert await store.get_evidence("ev-none") is None


async def test_tool_calls_are_idempotent_per_key(store: Store) -> None:
    await create(store, "inv-calls")
    await create(store, "inv-calls-2")
    args = {"collector": "dns", "target_type": "domain-name", "target": "example.com"}
    key = call_key("collectors.Collect", args)
    assert await store.call_outcome("inv-calls", key) == ("", "", None)
    assert await store.begin_call("inv-calls", key, "collectors.Collect", args, "worker-1")
    assert not await store.begin_call("inv-calls", key, "collectors.Collect", args, "worker-2")
    assert await store.call_outcome("inv-calls", key) == ("running", "", None)
    result = [{"id": "obs-1", "entity": {"type": "ipv4-addr", "value": "93.184.216.34"}}]
    await store.end_call("inv-calls", key, "ok", result=result)
    assert await store.call_outcome("inv-calls", key) == ("ok", "", result)
    assert await store.count_calls("inv-calls") == 1
    row = await store.get("inv-calls")
    assert row is not None and row.tool_calls == 1
    # The same call in another investigation is another call.
    assert await store.begin_call("inv-calls-2", key, "collectors.Collect", args, "worker-1")
    other = call_key("collectors.Collect", {**args, "collector": "whois"})
    assert await store.begin_call("inv-calls", other, "collectors.Collect", args, "worker-1")
    await store.end_call("inv-calls", other, "error", "UNAVAILABLE: whois down")
    assert await store.call_outcome("inv-calls", other) == ("error", "UNAVAILABLE: whois down", None)
    assert await store.count_calls("inv-calls") == 2


async def test_events_resume_after_an_id(store: Store) -> None:
    await create(store, "inv-events")
    await create(store, "inv-events-2")
    added = [await store.add_event("inv-events", kind, {"n": n}) for n, kind in
             enumerate(["phase", "tool_call", "warning", "tool_result"])]
    await store.add_event("inv-events-2", "phase", {"n": 99})
    ids = [event.id for event in added]
    assert ids == sorted(ids) and len(set(ids)) == 4
    events = await store.events("inv-events")
    assert [(e.id, e.kind, e.data) for e in events] == [(e.id, e.kind, e.data) for e in added]
    assert all(e.investigation_id == "inv-events" for e in events)
    assert [e.id for e in await store.events("inv-events", after_id=ids[1])] == ids[2:]
    assert [e.id for e in await store.events("inv-events", after_id=ids[0], limit=2)] == ids[1:3]
    assert await store.events("inv-events", after_id=ids[-1]) == []
    assert await store.warnings("inv-events") == [{"n": 2}]


async def test_cancel_then_finish_once(store: Store) -> None:
    await create(store, "inv-cancel")
    assert await store.request_cancel("inv-cancel")
    row = await store.get("inv-cancel")
    assert row is not None and row.cancel_requested and row.status == "queued"
    assert await store.finish("inv-cancel", "cancelled", None, "cancelled by the analyst")
    assert not await store.finish("inv-cancel", "completed", {"summary": "late"})  # the first finisher won
    assert not await store.request_cancel("inv-cancel")
    row = await store.get("inv-cancel")
    assert row is not None
    assert (row.status, row.error, row.report, row.finished) == ("cancelled", "cancelled by the analyst", None, True)
    assert row.started_at is not None and row.finished_at is not None and row.progress == 0.0
    assert await store.unfinished() == []
    assert not await store.request_cancel("no-such-investigation")
    assert not await store.finish("no-such-investigation", "failed", None)


async def test_finish_completed_keeps_the_report(store: Store) -> None:
    await create(store, "inv-done")
    await store.start("inv-done")
    await store.set_phase("inv-done", "report", 0.9)
    report = {"summary": "example.com serves a fake update", "hypotheses": [{"id": "H1"}]}
    assert await store.finish("inv-done", "completed", report)
    row = await store.get("inv-done")
    assert row is not None
    assert (row.status, row.progress, row.report) == ("completed", 1.0, report)
    assert row.finished_at is not None and row.started_at is not None and row.finished_at >= row.started_at
    brief = await store.get("inv-done", report=False)
    assert brief is not None and brief.report is None and brief.status == "completed"
    await store.start("inv-done")  # a recovered workflow does not reopen it
    again = await store.get("inv-done")
    assert again is not None and again.status == "completed"


async def test_page_newest_first_with_a_cursor(store: Store) -> None:
    for n in range(5):
        await create(store, f"inv-{n}")
    assert await store.finish("inv-1", "completed", {"summary": "one"})
    assert await store.finish("inv-3", "failed", None, "boom")
    everything = await store.page(limit=50)
    assert [r.id for r in everything] == ["inv-4", "inv-3", "inv-2", "inv-1", "inv-0"]
    assert all(r.report is None for r in everything)  # pages leave the report out
    seen: list[str] = []
    before: tuple[datetime, str] | None = None
    while True:
        batch = await store.page(limit=2, before=before)
        if not batch:
            break
        assert len(batch) <= 2
        seen += [r.id for r in batch]
        before = (batch[-1].created_at, batch[-1].id)
    assert seen == ["inv-4", "inv-3", "inv-2", "inv-1", "inv-0"]
    assert [r.id for r in await store.page(status="completed")] == ["inv-1"]
    assert [r.id for r in await store.page(status="queued")] == ["inv-4", "inv-2", "inv-0"]
    assert [r.id for r in await store.page(status="queued", limit=1, before=(everything[2].created_at, "inv-2"))] == [
        "inv-0"]
    assert await store.page(status="running") == []


async def test_page_cursor_breaks_timestamp_ties_by_id(dsn: str, store: Store) -> None:
    # Three rows of one instant: inserted in one transaction, they share now().
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for name in ("tie-b", "tie-a", "tie-c"):
            await conn.execute("insert into swarm.investigations (id, target, target_type, stix_type, mode, budget, "
                               "scope) values (%s, 'example.com', 'domain', 'domain-name', 'hybrid', '{}', '{}')",
                               (name,))
    await create(store, "after")
    rows = await store.page(limit=50)
    assert [r.id for r in rows] == ["after", "tie-c", "tie-b", "tie-a"]
    assert len({r.created_at for r in rows[1:]}) == 1
    at = rows[1].created_at
    assert [r.id for r in await store.page(before=(at, "tie-c"))] == ["tie-b", "tie-a"]
    assert [r.id for r in await store.page(before=(at, "tie-b"), limit=1)] == ["tie-a"]
    assert [r.id for r in await store.page(before=(at + timedelta(microseconds=1), ""))] == ["tie-c", "tie-b", "tie-a"]


async def test_replicas_heartbeat_and_forget(store: Store) -> None:
    await store.heartbeat("swarm-a", "thanos")
    await store.heartbeat("swarm-b", "starlord")
    assert await store.live_replicas(60) == {"swarm-a", "swarm-b"}
    assert await store.live_replicas(60.5) == {"swarm-a", "swarm-b"}
    await asyncio.sleep(1.2)
    await store.heartbeat("swarm-a", "thanos")  # a beat refreshes the time
    assert await store.live_replicas(1.0) == {"swarm-a"}
    assert await store.live_replicas(60) == {"swarm-a", "swarm-b"}
    await store.forget_replica("swarm-a")
    assert await store.live_replicas(60) == {"swarm-b"}
    await store.forget_replica("swarm-none")  # forgetting an unknown replica is harmless
    assert await store.live_replicas(60) == {"swarm-b"}


async def test_agents_upsert_and_clear(store: Store) -> None:
    await create(store, "inv-agents")
    await create(store, "inv-agents-2")
    await store.set_agent("inv-agents", "leader", "leader", "planning", "swarm-a")
    await store.set_agent("inv-agents", "worker-1", "worker", "collectors.Collect dns example.com", "swarm-a")
    await store.set_agent("inv-agents-2", "leader", "leader", "planning", "swarm-b")
    first = {(a.investigation_id, a.agent): a for a in await store.agents()}
    await asyncio.sleep(0.01)
    await store.set_agent("inv-agents", "leader", "leader", "voting", "swarm-b")
    agents = await store.agents()
    assert [(a.investigation_id, a.agent) for a in agents] == [
        ("inv-agents", "leader"), ("inv-agents", "worker-1"), ("inv-agents-2", "leader")]
    leader = agents[0]
    assert (leader.role, leader.activity, leader.instance) == ("leader", "voting", "swarm-b")
    assert leader.since > first[("inv-agents", "leader")].since
    await store.clear_agents("inv-agents")
    assert [(a.investigation_id, a.agent) for a in await store.agents()] == [("inv-agents-2", "leader")]


async def create_for(store: Store, id: str, team: str, tlp: str = "clear", max_active: int = 0) -> bool:
    return await store.create(id=id, target="example.com", target_type="domain", stix_type="domain-name",
                              mode="hybrid", budget=BUDGET, scope=Scope.build(infer_target("example.com"), []).to_dict(),
                              seeds=[], tlp=tlp, team=team, max_active=max_active)


async def test_teams_and_labels_filter_pages_agents_and_workflows(store: Store) -> None:
    for n, (team, tlp) in enumerate([("red", "clear"), ("blue", "clear"), ("red", "amber"), ("red", "green"),
                                     ("", "red"), ("red", "clear")]):
        assert await create_for(store, f"inv-{n}", team, tlp)
    row = await store.get("inv-0")
    assert row is not None and row.team == "red"
    await create(store, "inv-untouched")  # made without a team (amber)
    untouched = await store.get("inv-untouched")
    assert untouched is not None and untouched.team == ""

    def ids(rows: Sequence[Any]) -> list[str]:
        return [r.id for r in rows]

    red = Visibility(team="red")
    red_green = Visibility(team="red", tlps=("clear", "green"))
    assert ids(await store.page(visible=red)) == ["inv-5", "inv-3", "inv-2", "inv-0"]
    assert ids(await store.page(visible=red_green)) == ["inv-5", "inv-3", "inv-0"]
    assert ids(await store.page(visible=Visibility(tlps=("clear",)))) == ["inv-5", "inv-1", "inv-0"]
    assert ids(await store.page(visible=Visibility(team=""))) == ["inv-untouched", "inv-4"]
    assert len(await store.page()) == 7
    # A cursor walks only what the caller may see.
    first = await store.page(visible=red_green, limit=2)
    assert ids(first) == ["inv-5", "inv-3"]
    assert ids(await store.page(visible=red_green, before=(first[-1].created_at, first[-1].id))) == ["inv-0"]
    assert await store.finish("inv-3", "completed", {"summary": "done"})
    assert ids(await store.page(visible=red_green, status="queued")) == ["inv-5", "inv-0"]

    for investigation_id in ("inv-0", "inv-1", "inv-2"):
        await store.set_agent(investigation_id, "leader", "leader", "planning", "swarm-a")
    assert [a.investigation_id for a in await store.agents(red)] == ["inv-0", "inv-2"]
    assert [a.investigation_id for a in await store.agents(red_green)] == ["inv-0"]
    assert [a.investigation_id for a in await store.agents()] == ["inv-0", "inv-1", "inv-2"]

    steps = {"a": {"status": "pending"}}
    for n, team in enumerate(["red", "blue", "red", ""]):
        await store.create_workflow(id=f"wf-{n}", name="w", spec={"name": "w", "steps": []}, steps=steps, team=team)
    workflow = await store.get_workflow("wf-0")
    assert workflow is not None and workflow.team == "red"
    assert ids(await store.page_workflows(visible=red_green)) == ["wf-2", "wf-0"]  # workflows carry no label
    assert ids(await store.page_workflows(visible=red, limit=1)) == ["wf-2"]
    assert [w.team for w in await store.page_workflows()] == ["", "red", "blue", "red"]


async def test_a_teams_limit_counts_queued_and_running_only(store: Store) -> None:
    assert await create_for(store, "a-1", "red", max_active=2)
    assert await create_for(store, "a-2", "red", max_active=2)
    await store.start("a-2")
    assert not await create_for(store, "a-3", "red", max_active=2)
    assert await store.get("a-3") is None  # a refused start stores nothing
    assert await create_for(store, "b-1", "blue", max_active=2)  # each team its own
    assert await create_for(store, "a-4", "red")  # max_active 0: no limit
    assert all([await create_for(store, f"s-{n}", "", max_active=1) for n in range(3)])  # no team: no limit
    assert await store.finish("a-1", "completed", {"summary": "done"})
    assert await store.finish("a-2", "failed", None, "boom")
    assert not await create_for(store, "a-5", "red", max_active=1)  # a-4 is still queued
    assert await create_for(store, "a-5", "red", max_active=2)


async def test_racing_creates_take_a_teams_last_slot_once(dsn: str, store: Store) -> None:
    """Four creates for one slot, made to contend: the test holds the investigations table until all
    four wait on the database, then lets them go. Checked-then-inserted in separate steps, all four
    would count one active investigation and insert; under the team's lock exactly one does."""
    assert await create_for(store, "held", "red")
    async with await psycopg.AsyncConnection.connect(dsn) as blocker, await psycopg.AsyncConnection.connect(
            dsn, autocommit=True) as watcher:
        async with blocker.transaction():
            await blocker.execute("lock table swarm.investigations in access exclusive mode")
            racing = [asyncio.create_task(create_for(store, f"race-{n}", "red", max_active=2)) for n in range(4)]
            for _ in range(200):
                waiting = await (await watcher.execute("select count(*) from pg_locks where not granted")).fetchone()
                if waiting is not None and waiting[0] >= 4:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the four creates never all waited on the database")
        outcomes = await asyncio.gather(*racing)
    assert sorted(outcomes) == [False, False, False, True]
    active = [r.id for r in await store.page(visible=Visibility(team="red")) if r.status == "queued"]
    assert len(active) == 2 and "held" in active
