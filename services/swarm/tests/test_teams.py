"""Teams and TLP ceilings in the swarm service (services/swarm/servicer.py), over a real nats-server
with a real PostgreSQL and DBOS: the request's `access` (team, max TLP) decides which investigations,
evidence, agents and workflows a caller sees, what it may start, and how many investigations one
team runs at once.

The queue is polled once an hour, so investigations and workflows started here stay queued (the
collectors and reasoning they would call are not served); the rows the tests read are written
through the service's own store, as its workflow steps write them. Each test uses teams of its own,
so the module's one database serves them all."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
import pytest_asyncio

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmClient
from bev.testing.serving import serving_on_nats
from bev.vocab import Tlp
from services.swarm import workflow
from services.swarm.scope import Scope
from services.swarm.servicer import SwarmDeps, assemble
from services.swarm.settings import SwarmConfig
from services.swarm.store import EvidenceRow, Store, Visibility, evidence_id
from services.swarm.targets import infer_target

LIMIT = 3
SPEC = {"name": "iocs", "steps": [{"id": "iocs", "type": "data_processing", "operation": "extract_indicators",
                                   "text": "beacon to evil[.]example[.]com"}]}


@dataclass
class Service:
    client: SwarmClient
    store: Store


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def swarm(tmp_path_factory: pytest.TempPathFactory,
                fresh_database: Callable[[], str]) -> AsyncIterator[Service]:
    """The swarm service on a bus of its own and a new database. DBOS is one per process; the
    service's close() destroys it."""
    with NatsServer(tmp_path_factory.mktemp("teams-nats")) as server:
        clients_nc = await nats.connect(server.url)  # what the service would call other services over
        try:
            service = await assemble(
                InstanceInfo(service="swarm"), SwarmConfig(queue_poll_s=3600, max_active_per_team=LIMIT),
                SwarmDeps(fresh_database(), CollectorsClient.over_nats(clients_nc),
                          EmbeddingsClient.over_nats(clients_nc), ReasoningClient.over_nats(clients_nc),
                          tmp_path_factory.mktemp("teams-data")))
            async with serving_on_nats(service, server.url) as bus:
                assert service.store is not None
                yield Service(SwarmClient.over_nats(bus, timeout_s=30), service.store)
        finally:
            await clients_nc.close()


def team() -> str:
    return f"team-{uuid.uuid4().hex[:8]}"


def access(team: str = "", max_tlp: Tlp | None = None) -> common_pb2.Access:
    return common_pb2.Access(team=team, max_tlp=max_tlp.to_proto() if max_tlp else common_pb2.TLP_UNSPECIFIED,
                             key_id="k1")


async def investigation(store: Store, owner: str, tlp: Tlp = Tlp.CLEAR, target: str = "example.com") -> str:
    """A queued investigation of `owner`, written as StartInvestigation writes one."""
    investigation_id = str(uuid.uuid4())
    typed = infer_target(target, "")
    assert await store.create(id=investigation_id, target=typed.value, target_type=typed.kind,
                              stix_type=typed.stix_type, mode="hybrid",
                              budget={"max_tool_calls": 200, "max_tokens": 200000, "max_wall_s": 900.0,
                                      "max_depth": 2},
                              scope={**Scope.build(typed, []).to_dict(), "opsec": False}, seeds=[], tlp=tlp.value,
                              team=owner)
    return investigation_id


async def evidence(store: Store, investigation_id: str, tlp: Tlp = Tlp.CLEAR) -> str:
    item = EvidenceRow(id=evidence_id(investigation_id, "observation", tlp.value), investigation_id=investigation_id,
                       kind="observation", uri="https://example.com/", collector="web",
                       collected_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC), tlp=tlp.value,
                       content="web observed url https://example.com/")
    assert await store.add_evidence([item]) == [item.id]
    return item.id


async def refusal(call: Any, code: StatusCode = StatusCode.NOT_FOUND) -> str:
    """The message of the RpcError `call` (an awaitable) raises, checking its code."""
    with pytest.raises(RpcError) as caught:
        await call
    assert caught.value.code is code, caught.value
    return str(caught.value.message)


async def watch_all(client: SwarmClient, request: swarm_pb2.WatchInvestigationRequest) -> list[str]:
    return [event.kind async for event in client.WatchInvestigation(request)]


async def page_through(list_page: Callable[[str], Any], field: str) -> tuple[list[str], list[str], int]:
    """Every page of a listing: (ids in order, teams, how many pages)."""
    ids: list[str] = []
    teams: list[str] = []
    cursor, pages = "", 0
    while True:
        answer = await list_page(cursor)
        pages += 1
        ids += [item.id for item in getattr(answer, field)]
        teams += [item.team for item in getattr(answer, field)]
        cursor = answer.next_cursor
        if not cursor:
            return ids, teams, pages


# -- by id ----------------------------------------------------------------------------------------

def by_id_rpcs(client: SwarmClient, caller: common_pb2.Access) -> dict[str, Callable[[str], Awaitable[Any]]]:
    """Each by-id RPC of an investigation, as the caller: id -> its answer."""
    return {
        "GetInvestigation": lambda i: client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=i, access=caller)),
        "CancelInvestigation": lambda i: client.CancelInvestigation(
            swarm_pb2.CancelInvestigationRequest(id=i, access=caller)),
        "GetReport": lambda i: client.GetReport(swarm_pb2.GetReportRequest(id=i, access=caller)),
        "WatchInvestigation": lambda i: watch_all(client, swarm_pb2.WatchInvestigationRequest(id=i, access=caller)),
    }


async def test_another_teams_investigation_answers_as_an_unknown_id(swarm: Service) -> None:
    client, red, blue = swarm.client, team(), team()
    finished = await investigation(swarm.store, red)
    item = await evidence(swarm.store, finished)
    await swarm.store.add_event(finished, "phase", {"phase": "ingestion", "progress": 0.1})
    assert await workflow.finish(finished, "cancelled", "cancelled by the analyst", {}) == "cancelled"
    unknown = str(uuid.uuid4())

    theirs = access(blue)
    for name, call in by_id_rpcs(client, theirs).items():
        missing = await refusal(call(unknown))
        assert missing == f"no investigation {unknown!r}", name
        assert await refusal(call(finished)) == missing.replace(unknown, finished), name
    unknown_item = f"ev-{uuid.uuid4().hex[:24]}"
    missing = await refusal(client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=unknown_item, access=theirs)))
    assert missing == f"no evidence {unknown_item!r}"
    hidden = await refusal(client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=item, access=theirs)))
    assert hidden == missing.replace(unknown_item, item)

    # Its own team, and a caller of every team (an admin key, a service), see it all.
    for allowed in (access(red), access()):
        rpcs = by_id_rpcs(client, allowed)
        got = await rpcs["GetInvestigation"](finished)
        assert (got.id, got.team, got.status) == (finished, red, swarm_pb2.STATUS_CANCELLED)
        report = await rpcs["GetReport"](finished)
        assert json.loads(report.content)["investigation"]["status"] == "cancelled"
        cancelled = await rpcs["CancelInvestigation"](finished)
        assert cancelled.team == red and cancelled.status == swarm_pb2.STATUS_CANCELLED
        assert await rpcs["WatchInvestigation"](finished) == ["phase", "done"]
        found = await client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=item, access=allowed))
        assert found.investigation_id == finished


async def test_cancel_across_teams_leaves_the_investigation_alone(swarm: Service) -> None:
    red, blue = team(), team()
    queued = await investigation(swarm.store, red)
    await refusal(swarm.client.CancelInvestigation(swarm_pb2.CancelInvestigationRequest(id=queued,
                                                                                         access=access(blue))))
    row = await swarm.store.get(queued, report=False)
    assert row is not None and row.status == "queued" and not row.cancel_requested


async def test_another_teams_workflow_answers_as_an_unknown_id(swarm: Service) -> None:
    client, red, blue = swarm.client, team(), team()
    submitted = await client.SubmitWorkflow(swarm_pb2.SubmitWorkflowRequest(spec_json=json.dumps(SPEC),
                                                                            access=access(red)))
    assert submitted.team == red and submitted.status == swarm_pb2.STATUS_QUEUED
    unknown = str(uuid.uuid4())
    rpcs: dict[str, Callable[[str], Awaitable[Any]]] = {
        "GetWorkflow": lambda i: client.GetWorkflow(swarm_pb2.GetWorkflowRequest(id=i, access=access(blue))),
        "CancelWorkflow": lambda i: client.CancelWorkflow(swarm_pb2.CancelWorkflowRequest(id=i, access=access(blue))),
    }
    for name, call in rpcs.items():
        missing = await refusal(call(unknown))
        assert missing == f"no workflow {unknown!r}", name
        assert await refusal(call(submitted.id)) == missing.replace(unknown, submitted.id), name
    row = await swarm.store.get_workflow(submitted.id)
    assert row is not None and row.status == "queued" and not row.cancel_requested  # blue's cancel did nothing

    for allowed in (access(red), access()):
        got = await client.GetWorkflow(swarm_pb2.GetWorkflowRequest(id=submitted.id, access=allowed))
        assert (got.id, got.team) == (submitted.id, red)
    cancelled = await client.CancelWorkflow(swarm_pb2.CancelWorkflowRequest(id=submitted.id, access=access(red)))
    assert cancelled.status == swarm_pb2.STATUS_CANCELLED and cancelled.team == red
    by_service = await client.SubmitWorkflow(swarm_pb2.SubmitWorkflowRequest(spec_json=json.dumps(SPEC)))
    assert by_service.team == ""
    await refusal(client.GetWorkflow(swarm_pb2.GetWorkflowRequest(id=by_service.id, access=access(red))))
    await client.CancelWorkflow(swarm_pb2.CancelWorkflowRequest(id=by_service.id))


async def test_tlp_above_the_callers_ceiling_answers_as_an_unknown_id(swarm: Service) -> None:
    client, red = swarm.client, team()
    amber = await investigation(swarm.store, red, Tlp.AMBER)
    amber_item = await evidence(swarm.store, amber, Tlp.CLEAR)
    clear = await investigation(swarm.store, red, Tlp.CLEAR)
    red_item = await evidence(swarm.store, clear, Tlp.RED)  # a red finding in a clear investigation
    clear_item = await evidence(swarm.store, clear, Tlp.CLEAR)
    green = access(red, Tlp.GREEN)
    assert await refusal(client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=amber, access=green))) == \
        f"no investigation {amber!r}"
    assert await refusal(client.GetReport(swarm_pb2.GetReportRequest(id=amber, access=green))) == \
        f"no investigation {amber!r}"
    assert await refusal(watch_all(client, swarm_pb2.WatchInvestigationRequest(id=amber, access=green))) == \
        f"no investigation {amber!r}"
    for hidden in (amber_item, red_item):
        assert await refusal(client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=hidden, access=green))) == \
            f"no evidence {hidden!r}"
    seen = await client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=clear, access=green))
    assert seen.tlp == common_pb2.TLP_CLEAR and seen.team == red
    assert (await client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=clear_item, access=green))).id == clear_item

    # Cleared for amber: the amber investigation, not the red item; no ceiling: everything.
    amber_key = access(red, Tlp.AMBER)
    assert (await client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=amber, access=amber_key))).tlp == \
        common_pb2.TLP_AMBER
    assert (await client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=amber_item, access=amber_key))).id == amber_item
    await refusal(client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=red_item, access=amber_key)))
    for anyone in (access(red), access()):
        assert (await client.GetEvidence(swarm_pb2.GetEvidenceRequest(id=red_item, access=anyone))).tlp == \
            common_pb2.TLP_RED


# -- lists ----------------------------------------------------------------------------------------

async def test_lists_show_the_callers_team_below_its_ceiling_page_by_page(swarm: Service) -> None:
    client, red, blue = swarm.client, team(), team()
    labels = [Tlp.CLEAR, Tlp.AMBER, Tlp.GREEN, Tlp.RED, Tlp.CLEAR, Tlp.AMBER, Tlp.GREEN]
    reds = [await investigation(swarm.store, red, tlp) for tlp in labels]
    blues = [await investigation(swarm.store, blue) for _ in range(3)]
    finished = reds[4]
    assert await swarm.store.finish(finished, "failed", None, "boom")

    def lister(caller: common_pb2.Access, limit: int = 2,
               status: swarm_pb2.Status.ValueType = swarm_pb2.STATUS_UNSPECIFIED) -> Callable[[str], Any]:
        return lambda cursor: client.ListInvestigations(swarm_pb2.ListInvestigationsRequest(
            limit=limit, cursor=cursor, status=status, access=caller))

    newest_first = list(reversed(reds))
    ids, teams, pages = await page_through(lister(access(red)), "investigations")
    assert ids == newest_first and set(teams) == {red} and pages == 4
    green_or_below = [i for i, tlp in zip(reds, labels, strict=True) if tlp.rank <= Tlp.GREEN.rank][::-1]
    ids, _, pages = await page_through(lister(access(red, Tlp.GREEN)), "investigations")
    assert ids == green_or_below and len(ids) == 4 and pages == 2
    ids, _, _ = await page_through(lister(access(red), status=swarm_pb2.STATUS_QUEUED), "investigations")
    assert ids == [i for i in newest_first if i != finished]
    ids, _, _ = await page_through(lister(access(red, Tlp.GREEN), status=swarm_pb2.STATUS_FAILED), "investigations")
    assert ids == [finished]
    ids, _, _ = await page_through(lister(access(blue, Tlp.GREEN), limit=1), "investigations")
    assert ids == list(reversed(blues))

    # No team: every team's (this module's other tests' too), newest first, with their teams.
    ids, teams, _ = await page_through(lister(access(), limit=5), "investigations")
    by_id = dict(zip(ids, teams, strict=True))
    assert [i for i in ids if i in {*reds, *blues}] == list(reversed(blues)) + newest_first
    assert {by_id[i] for i in reds} == {red} and {by_id[i] for i in blues} == {blue}
    ids, _, _ = await page_through(lister(access(max_tlp=Tlp.CLEAR), limit=5), "investigations")
    assert [i for i in ids if i in reds] == [i for i, tlp in zip(reds, labels, strict=True) if tlp is Tlp.CLEAR][::-1]


async def test_workflow_lists_show_the_callers_team_page_by_page(swarm: Service) -> None:
    client, red, blue = swarm.client, team(), team()
    reds = [(await client.SubmitWorkflow(swarm_pb2.SubmitWorkflowRequest(spec_json=json.dumps(SPEC),
                                                                         access=access(red)))).id for _ in range(3)]
    blues = [(await client.SubmitWorkflow(swarm_pb2.SubmitWorkflowRequest(spec_json=json.dumps(SPEC),
                                                                          access=access(blue)))).id for _ in range(2)]

    def lister(caller: common_pb2.Access) -> Callable[[str], Any]:
        return lambda cursor: client.ListWorkflows(swarm_pb2.ListWorkflowsRequest(limit=2, cursor=cursor,
                                                                                  access=caller))

    ids, teams, pages = await page_through(lister(access(red, Tlp.CLEAR)), "workflows")
    assert ids == list(reversed(reds)) and set(teams) == {red} and pages == 2
    ids, teams, _ = await page_through(lister(access(blue)), "workflows")
    assert ids == list(reversed(blues)) and set(teams) == {blue}
    ids, teams, _ = await page_through(lister(access()), "workflows")
    assert [i for i in ids if i in {*reds, *blues}] == list(reversed(blues)) + list(reversed(reds))
    for workflow_id in [*reds, *blues]:  # leave none queued for the module's DBOS
        await client.CancelWorkflow(swarm_pb2.CancelWorkflowRequest(id=workflow_id))


async def test_list_agents_shows_the_agents_of_visible_investigations(swarm: Service) -> None:
    red, blue = team(), team()
    mine = await investigation(swarm.store, red)
    mine_amber = await investigation(swarm.store, red, Tlp.AMBER)
    theirs = await investigation(swarm.store, blue)
    for investigation_id in (mine, mine_amber, theirs):
        await swarm.store.set_agent(investigation_id, "leader", "leader", "planning", "swarm-a")
    await swarm.store.set_agent(mine, "worker-1", "worker", "collectors.Collect dns example.com", "swarm-a")

    async def agents(caller: common_pb2.Access) -> list[str]:
        answer = await swarm.client.ListAgents(swarm_pb2.ListAgentsRequest(access=caller))
        assert answer.roles  # the roles are everyone's
        return [agent.id for agent in answer.agents]

    assert await agents(access(red, Tlp.GREEN)) == [f"{mine}/leader", f"{mine}/worker-1"]
    assert sorted(await agents(access(red))) == sorted([f"{mine}/leader", f"{mine}/worker-1", f"{mine_amber}/leader"])
    assert await agents(access(blue)) == [f"{theirs}/leader"]
    everyone = await agents(access())
    assert {f"{mine}/leader", f"{mine}/worker-1", f"{mine_amber}/leader", f"{theirs}/leader"} <= set(everyone)
    for investigation_id in (mine, mine_amber, theirs):
        await swarm.store.clear_agents(investigation_id)


# -- starting -------------------------------------------------------------------------------------

def start_request(caller: common_pb2.Access, tlp: Tlp = Tlp.CLEAR) -> swarm_pb2.StartInvestigationRequest:
    return swarm_pb2.StartInvestigationRequest(target="example.com", tlp=tlp.to_proto(), access=caller)


async def active(store: Store, owner: str) -> list[str]:
    rows = await store.page(limit=500, visible=Visibility(team=owner))
    return [r.id for r in rows if r.status in ("queued", "running")]


async def close_all(store: Store, investigation_ids: Sequence[str]) -> None:
    """Closes them as a cancel does, so that the module's DBOS has nothing of theirs to run."""
    for investigation_id in investigation_ids:
        assert await store.finish(investigation_id, "cancelled", None, "cancelled by the analyst")


async def test_start_owns_the_investigation_and_respects_the_ceiling(swarm: Service) -> None:
    client, red = swarm.client, team()
    message = await refusal(client.StartInvestigation(start_request(access(red, Tlp.GREEN), Tlp.AMBER)),
                            StatusCode.PERMISSION_DENIED)
    assert message == "this key is cleared up to TLP green: it cannot start a TLP amber investigation"
    assert await active(swarm.store, red) == []  # nothing was stored
    started = await client.StartInvestigation(start_request(access(red, Tlp.GREEN), Tlp.GREEN))
    assert (started.team, started.tlp, started.status) == (red, common_pb2.TLP_GREEN, swarm_pb2.STATUS_QUEUED)
    amber = await client.StartInvestigation(start_request(access(red, Tlp.AMBER), Tlp.AMBER))
    assert amber.team == red and amber.tlp == common_pb2.TLP_AMBER
    by_service = await client.StartInvestigation(start_request(access(), Tlp.RED))
    assert by_service.team == "" and by_service.tlp == common_pb2.TLP_RED
    got = await client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=started.id, access=access(red)))
    assert got.team == red
    await close_all(swarm.store, [started.id, amber.id, by_service.id])


async def test_a_team_runs_at_most_its_limit_at_once(swarm: Service) -> None:
    client, red, blue = swarm.client, team(), team()
    started = [await client.StartInvestigation(start_request(access(red))) for _ in range(LIMIT)]
    message = await refusal(client.StartInvestigation(start_request(access(red))), StatusCode.RESOURCE_EXHAUSTED)
    assert f"team {red!r} already has {LIMIT} investigations queued or running" in message
    assert "swarm.max_active_per_team" in message
    assert sorted(await active(swarm.store, red)) == sorted(s.id for s in started)
    other = await client.StartInvestigation(start_request(access(blue)))  # another team has its own slots
    assert other.team == blue
    unlimited = [await client.StartInvestigation(start_request(access())) for _ in range(LIMIT + 1)]
    assert all(s.team == "" for s in unlimited)  # no team (services, admin keys): not limited

    # A finished investigation frees its slot.
    await close_all(swarm.store, [started[0].id])
    again = await client.StartInvestigation(start_request(access(red)))
    await refusal(client.StartInvestigation(start_request(access(red))), StatusCode.RESOURCE_EXHAUSTED)
    await close_all(swarm.store, [*(s.id for s in started[1:]), again.id, other.id, *(s.id for s in unlimited)])


async def test_racing_starts_for_the_last_slot_admit_exactly_one(swarm: Service) -> None:
    client, red = swarm.client, team()
    held = [(await client.StartInvestigation(start_request(access(red)))).id for _ in range(LIMIT - 1)]
    outcomes = await asyncio.gather(*(client.StartInvestigation(start_request(access(red))) for _ in range(4)),
                                    return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, swarm_pb2.Investigation)]
    lost = [o for o in outcomes if isinstance(o, RpcError)]
    assert len(won) == 1 and len(lost) == 3, outcomes
    assert all(e.code is StatusCode.RESOURCE_EXHAUSTED for e in lost)
    assert sorted(await active(swarm.store, red)) == sorted([*held, won[0].id])
    await close_all(swarm.store, [*held, won[0].id])
