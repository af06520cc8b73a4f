"""Monitoring: fleet health from NATS discovery; anomaly detection and alerting grow here."""

from __future__ import annotations

from collections.abc import Iterable

from nats.aio.client import Client as NatsClient

from bev.common.v1 import common_pb2
from bev.fleet import discover, missing_services
from bev.manifest import ManifestError, load_manifest
from bev.monitoring.v1 import monitoring_pb2
from bev.monitoring.v1.monitoring_rpc import MonitoringServicer
from bev.rpc import CallContext, InstanceInfo
from bev.runtime import ServiceRuntime, StartupError
from services.monitoring.settings import Settings

_STATUS = {
    "serving": common_pb2.HealthResponse.STATUS_SERVING,
    "degraded": common_pb2.HealthResponse.STATUS_DEGRADED,
    "not_serving": common_pb2.HealthResponse.STATUS_NOT_SERVING,
}


class Monitoring(MonitoringServicer):
    def __init__(self, info: InstanceInfo, nc: NatsClient, settings: Settings, expected: Iterable[str]) -> None:
        super().__init__(info)
        self.nc = nc
        self.config = settings.monitoring
        self.expected = tuple(expected)  # the fleet's services, from the manifest

    async def FleetHealth(
        self, request: monitoring_pb2.FleetHealthRequest, ctx: CallContext
    ) -> monitoring_pb2.FleetHealthResponse:
        # Leave time to answer within the caller's deadline.
        timeout = min(request.timeout_s or self.config.discovery_timeout_s, max(0.1, ctx.time_remaining() / 3))
        instances = await discover(self.nc, timeout)
        missing = missing_services(instances, self.expected)
        all_serving = not missing and all(i.state == "serving" for i in instances)
        return monitoring_pb2.FleetHealthResponse(
            status=common_pb2.HealthResponse.STATUS_SERVING if all_serving else common_pb2.HealthResponse.STATUS_DEGRADED,
            missing=missing,
            instances=[
                monitoring_pb2.InstanceHealth(
                    service=i.service,
                    instance=i.instance,
                    node=i.node,
                    status=_STATUS.get(i.state, common_pb2.HealthResponse.STATUS_UNSPECIFIED),
                    uptime_s=i.uptime_s,
                    requests=i.requests,
                    errors=i.errors,
                    rpc_rate=i.rpc_rate,
                    grpc_address=i.grpc_address,
                    metrics_address=i.metrics_address,
                    checks=[common_pb2.HealthCheck(**c) for c in i.checks],
                    error=i.error,
                )
                for i in instances
            ],
        )


async def build(runtime: ServiceRuntime[Settings]) -> Monitoring:
    try:
        expected = load_manifest().service_names()
    except ManifestError as exc:
        raise StartupError(str(exc)) from None
    return Monitoring(runtime.info, runtime.nc, runtime.settings, expected)
