"""Monitoring: fleet health from NATS discovery, and the watch (services/monitoring/watch.py):
alerts and anomalies correlated into incidents, self-healing, Alertmanager; the operations
assistant (services/monitoring/ops.py) answers questions from live figures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nats.aio.client import Client as NatsClient

from bev.common.v1 import common_pb2
from bev.fleet import discover, missing_services
from bev.manifest import Manifest, ManifestError, load_manifest
from bev.monitoring.v1 import monitoring_pb2
from bev.monitoring.v1.monitoring_rpc import MonitoringServicer
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.runtime import ServiceRuntime, StartupError
from services.monitoring import ops
from services.monitoring.correlation import Incident
from services.monitoring.healing import Action
from services.monitoring.prom import PrometheusApi
from services.monitoring.settings import Settings
from services.monitoring.watch import Watch

MAX_QUESTION_CHARS = 2000

_STATUS = {
    "serving": common_pb2.HealthResponse.STATUS_SERVING,
    "degraded": common_pb2.HealthResponse.STATUS_DEGRADED,
    "not_serving": common_pb2.HealthResponse.STATUS_NOT_SERVING,
}


class Monitoring(MonitoringServicer):
    def __init__(self, info: InstanceInfo, nc: NatsClient, settings: Settings, expected: Iterable[str],
                 manifest: Manifest | None = None) -> None:
        super().__init__(info)
        self.nc = nc
        self.config = settings.monitoring
        self.expected = tuple(expected)  # the fleet's services, from the manifest
        # The watch needs Prometheus; without one (tests of FleetHealth alone) only FleetHealth answers.
        self.watch = (Watch(nc, self.config, manifest, info.node)
                      if manifest is not None and self.config.prometheus_url else None)

    async def start(self) -> None:
        if self.watch is not None:
            await self.watch.start()

    async def close(self) -> None:
        if self.watch is not None:
            await self.watch.close()

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        if self.watch is None:
            return [common_pb2.HealthCheck(name="prometheus", ok=True, detail="not configured: the watch is off")]
        error = self.watch.last_error
        return [common_pb2.HealthCheck(name="prometheus", ok=not error, detail=error or self.config.prometheus_url)]

    def _watching(self) -> Watch:
        if self.watch is None:
            raise RpcError(StatusCode.FAILED_PRECONDITION,
                           "monitoring has no Prometheus (BEV_MONITORING__PROMETHEUS_URL is not set)")
        return self.watch

    async def ListIncidents(self, request: monitoring_pb2.ListIncidentsRequest,
                            ctx: CallContext) -> monitoring_pb2.ListIncidentsResponse:
        if request.status not in ("", "open", "resolved"):
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"status must be open, resolved or empty, not {request.status!r}")
        if request.limit < 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        watch = self._watching()
        incidents = [i for i in reversed(watch.correlator.incidents.values())
                     if i.published and (not request.status or i.status == request.status)]
        return monitoring_pb2.ListIncidentsResponse(
            incidents=[incident_pb(i, watch.actions.get(i.id, [])) for i in incidents[: request.limit or 100]],
            actions=[action_pb(a) for a in reversed(watch.healer.history)],
            healing_dry_run=self.config.healing.dry_run,
        )

    async def Ask(self, request: monitoring_pb2.AskRequest, ctx: CallContext) -> monitoring_pb2.AskResponse:
        question = request.question.strip()
        if not question:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "question must not be empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"question is longer than {MAX_QUESTION_CHARS} characters")
        watch = self._watching()
        open_incidents = [incident_pb(i, watch.actions.get(i.id, []))
                          for i in watch.correlator.open_incidents() if i.published]
        fleet = await self.FleetHealth(monitoring_pb2.FleetHealthRequest(), ctx)
        prometheus = PrometheusApi(self.config.prometheus_url)
        try:
            # The queries take seconds at most; the model gets what is left, short of the deadline.
            model_s = max(5.0, min(60.0, ctx.time_remaining() - 15))
            return await ops.answer(question, prometheus, open_incidents, fleet,
                                    ReasoningClient.over_nats(self.nc, timeout_s=model_s + 5), self.expected,
                                    model_timeout_s=model_s)
        finally:
            await prometheus.close()

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


def _alert_pb(alert: Any) -> monitoring_pb2.Alert:
    return monitoring_pb2.Alert(
        name=alert.name, source=alert.source, service=alert.subject, node=alert.node, instance=alert.instance,
        severity=alert.severity, summary=alert.summary, started_at=alert.started_at, value=alert.value,
        labels=alert.labels, resolved_at=alert.resolved_at)


def action_pb(action: Action) -> monitoring_pb2.HealingAction:
    return monitoring_pb2.HealingAction(
        kind=action.kind, target=action.target, node=action.node, reason=action.reason, outcome=action.outcome,
        error=action.error, at=action.at, incident_id=action.incident_id)


def incident_pb(incident: Incident, actions: list[Action]) -> monitoring_pb2.Incident:
    return monitoring_pb2.Incident(
        id=incident.id, status=incident.status, root=incident.root, node=incident.node, severity=incident.severity,
        summary=incident.summary, opened_at=incident.opened_at, updated_at=incident.updated_at,
        resolved_at=incident.resolved_at, alerts=[_alert_pb(a) for a in incident.alerts.values()],
        affected=incident.affected, actions=[action_pb(a) for a in actions])


async def build(runtime: ServiceRuntime[Settings]) -> Monitoring:
    try:
        manifest = load_manifest()
    except ManifestError as exc:
        raise StartupError(str(exc)) from None
    return Monitoring(runtime.info, runtime.nc, runtime.settings, manifest.service_names(), manifest)
