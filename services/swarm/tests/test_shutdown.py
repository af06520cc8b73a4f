"""A swarm told to stop halts its workflows at once (`Swarm.stopping` -> `Engine.halt`), before it
drains its in-flight calls: over a real nats-server, PostgreSQL and DBOS.

Why: `bev up` stops every service at the same moment, and a swarm draining its calls (an analyst's
open event stream holds it for seconds) used to keep its workflows going meanwhile. Their tool
calls met collectors going away; the failures were recorded as the step's outcome and the step was
checkpointed, so after the restart the investigation went on without the pivots that step should
have found (CI saw a fleet-restarted investigation never analyse the file its evidence linked to).
Here no collectors are served at all: the investigation's first round waits for them, as it would
across a restart, and the stop must leave that round unrecorded and the workflow pending."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import nats
import pytest
import pytest_asyncio
from dbos import DBOS

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.engines import NatsServer
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import InstanceInfo
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmClient
from bev.testing.serving import serving_on_nats
from services.swarm import workflow
from services.swarm.servicer import Swarm, SwarmDeps, assemble
from services.swarm.settings import SwarmConfig
from services.swarm.store import Store

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Running:
    service: Swarm
    client: SwarmClient

    @property
    def store(self) -> Store:
        assert self.service.store is not None
        return self.service.store


@pytest_asyncio.fixture(loop_scope="session")
async def swarm(tmp_path_factory: pytest.TempPathFactory,
                fresh_database: Callable[[], str]) -> AsyncIterator[Running]:
    """The swarm service polling its queue often, on a bus where nothing else serves."""
    with NatsServer(tmp_path_factory.mktemp("shutdown-nats")) as server:
        clients_nc = await nats.connect(server.url)
        try:
            service = await assemble(
                InstanceInfo(service="swarm"), SwarmConfig(queue_poll_s=0.2),
                SwarmDeps(fresh_database(), CollectorsClient.over_nats(clients_nc),
                          EmbeddingsClient.over_nats(clients_nc), ReasoningClient.over_nats(clients_nc),
                          tmp_path_factory.mktemp("shutdown-data")))
            async with serving_on_nats(service, server.url) as bus:
                yield Running(service, SwarmClient.over_nats(bus, timeout_s=30))
        finally:
            await clients_nc.close()


async def kinds(store: Store, investigation_id: str) -> list[str]:
    return [event.kind for event in await store.events(investigation_id)]


async def test_stopping_halts_a_workflow_mid_step_without_checkpointing_it(swarm: Running) -> None:
    started = await swarm.client.StartInvestigation(
        swarm_pb2.StartInvestigationRequest(target="example.com", access=common_pb2.Access()))
    deadline = time.monotonic() + 30
    while "tool_call" not in await kinds(swarm.store, started.id):  # round 0 waits for a collectors instance
        assert time.monotonic() < deadline, await kinds(swarm.store, started.id)
        await asyncio.sleep(0.1)
    assert workflow.RUNNING

    began = time.monotonic()
    await swarm.service.stopping()
    halted_s = time.monotonic() - began

    assert not workflow.RUNNING and halted_s < 2, halted_s
    status = await DBOS.get_workflow_status_async(started.id)
    assert status is not None and status.status == "PENDING"  # resumed after the restart
    steps = [step["function_name"] for step in await DBOS.list_workflow_steps_async(started.id)]
    assert steps[:2] == ["swarm.begin", "swarm.plan"] and "swarm.ingest_round" not in steps, steps
    seen = await kinds(swarm.store, started.id)
    assert "tool_result" not in seen and "warning" not in seen, seen  # no failure recorded as an outcome
    row = await swarm.store.get(started.id, report=False)
    assert row is not None and row.status == "running" and not row.finished

    # The queue may still hand this replica work while it drains: none of it gets a step in.
    later = await swarm.client.StartInvestigation(
        swarm_pb2.StartInvestigationRequest(target="example.org", access=common_pb2.Access()))
    await asyncio.sleep(1.5)  # several polls of the queue
    assert await kinds(swarm.store, later.id) == []
    assert not workflow.RUNNING
    assert [s["function_name"] for s in await DBOS.list_workflow_steps_async(later.id)] == []
