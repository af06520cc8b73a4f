"""The avatar's access cache (a swarm's yes, trusted for access_cache_s) counts its hits and misses:
bev_cache_requests_total{cache="avatar_access"} and its hit rate. Beside the real swarm."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from bev.avatar.v1 import avatar_pb2
from bev.engines import NatsServer
from services.avatar.settings import AvatarConfig
from services.avatar.testing import AvatarBesideSwarm, avatar_beside_swarm

CONFIG = AvatarConfig(access_cache_s=0.5)


def lookups(result: str) -> float:
    return REGISTRY.get_sample_value("bev_cache_requests_total", {"cache": "avatar_access", "result": result}) or 0.0


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("avatar-cache-nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(own_nats: NatsServer, fresh_database: Callable[[], str],
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AvatarBesideSwarm]:
    async with avatar_beside_swarm(own_nats.url, fresh_database(), tmp_path_factory.mktemp("swarm-data"),
                                   CONFIG) as served:
        yield served


@pytest.mark.asyncio(loop_scope="session")
async def test_access_checks_count_hits_and_misses(stack: AvatarBesideSwarm) -> None:
    request = avatar_pb2.GetStateRequest(investigation_id=await stack.investigation())
    hits, misses = lookups("hit"), lookups("miss")
    await stack.client.GetState(request)  # asks the swarm
    await stack.client.GetState(request)  # the swarm's yes, cached
    await stack.client.GetState(request)
    assert (lookups("hit") - hits, lookups("miss") - misses) == (2, 1)
    await asyncio.sleep(CONFIG.access_cache_s + 0.1)
    await stack.client.GetState(request)  # expired: asks again
    assert (lookups("hit") - hits, lookups("miss") - misses) == (2, 2)
    rate = REGISTRY.get_sample_value("bev_cache_hit_rate", {"cache": "avatar_access"})
    assert rate == lookups("hit") / (lookups("hit") + lookups("miss"))
