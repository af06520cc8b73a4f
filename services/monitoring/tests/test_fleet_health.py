"""FleetHealth over a real nats-server: every instance found through NATS micro discovery, with its
own Health, and the manifest's services that have no instance named as missing."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from bev.common.v1 import common_pb2
from bev.engines import NatsServer
from bev.manifest import load_manifest
from bev.monitoring.v1 import monitoring_pb2
from bev.monitoring.v1.monitoring_rpc import MonitoringClient
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import assemble
from services.avatar.settings import AvatarConfig
from services.monitoring.servicer import Monitoring
from services.monitoring.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_fleet_health_lists_instances_and_names_the_missing(tmp_path: Path) -> None:
    fleet = load_manifest().service_names()
    # A bus of its own: services other tests serve on the session's would be discovered too.
    with NatsServer(tmp_path / "nats") as nats_server:
        # Discovery goes out on a connection of the monitoring service's own, and the avatar follows
        # events on its own, as each process has in the fleet.
        discovery = await nats.connect(nats_server.url)
        avatar_nc = await nats.connect(nats_server.url)
        avatar = await assemble(InstanceInfo(service="avatar", node="starlord"), AvatarConfig(), avatar_nc)
        monitoring = Monitoring(InstanceInfo(service="monitoring", node="oracle1"), discovery, Settings(), fleet)
        try:
            async with serving_on_nats(avatar, nats_server.url), serving_on_nats(monitoring, nats_server.url) as nc:
                client = MonitoringClient.over_nats(nc, timeout_s=10)
                health = await client.FleetHealth(monitoring_pb2.FleetHealthRequest(timeout_s=0.5))
        finally:
            await avatar_nc.close()
            await discovery.close()

    by_service = {i.service: i for i in health.instances}
    assert set(by_service) == {"avatar", "monitoring"}
    assert by_service["avatar"].node == "starlord" and by_service["avatar"].instance == avatar.info.instance
    assert by_service["avatar"].status == common_pb2.HealthResponse.STATUS_SERVING
    assert by_service["avatar"].grpc_address == ""  # served on NATS only here
    assert list(health.missing) == [s for s in fleet if s not in ("avatar", "monitoring")]
    assert health.status == common_pb2.HealthResponse.STATUS_DEGRADED  # services are missing
