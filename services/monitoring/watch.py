"""The monitoring loop: every `interval_s`, gather what is wrong, correlate it, heal, tell people.

Sources of alerts (each becomes a `Signal`):
- probe: Prometheus's `up` per scrape target; `down_after` failed scrapes in a row is InstanceDown
  (a killed process, and a frozen one: its /metrics thread freezes with it);
- prometheus: the rules' firing alerts (deploy/oracle1/rules/, /api/v1/alerts);
- health: instances' own Health checks (a failing `postgres` check is about PostgreSQL);
- supervisor: engine exits on `bev.events.fleet.>` (until the engine is back);
- anomaly: live series (latency, error ratio, queue depth, decode tokens/s) outside their robust
  band (services/monitoring/anomaly.py).
Incidents go to JetStream (`bev.events.alert.incident.<id>`), to Alertmanager's v2 API, and to
ListIncidents; healing actions to `bev.events.alert.action.<incident>`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Gauge

from bev.fleet import Instance, discover
from bev.manifest import Manifest
from bev.telemetry import get_logger
from services.monitoring.anomaly import SIGNALS, Detector
from services.monitoring.correlation import BACKEND_PREFIX, Change, Correlator, Dependencies, Incident, Signal
from services.monitoring.healing import Action, Healer
from services.monitoring.prom import AlertmanagerApi, MetricsUnavailable, PrometheusApi
from services.monitoring.settings import MonitoringConfig

log = get_logger(__name__)

INCIDENTS_OPEN = Gauge("bev_monitoring_incidents_open", "Open incidents (published)")
ANOMALIES = Counter("bev_monitoring_anomalies_total", "Anomalies detected on live series", ["signal"])
HEALING = Counter("bev_monitoring_healing_actions_total", "Self-healing actions", ["kind", "outcome"])
CYCLE_SECONDS = Gauge("bev_monitoring_cycle_seconds", "Duration of the last watch cycle")
JS_PENDING = Gauge("bev_jetstream_consumer_pending", "Messages a JetStream consumer has not been delivered yet",
                   ["stream", "consumer"])
JS_ACK_PENDING = Gauge("bev_jetstream_consumer_ack_pending", "Messages delivered to a JetStream consumer, not acked",
                       ["stream", "consumer"])
JS_MESSAGES = Gauge("bev_jetstream_stream_messages", "Messages stored in a JetStream stream", ["stream"])

ENGINE_EXIT_HOLD_S = 120.0  # an engine exit with no "restarted" event stops counting after this
# An engine crash is an incident even when its supervisor has it back within a second: its alert
# fires at least this long, enough to settle and be published (then it resolves).
ENGINE_EXIT_MIN_S = 10.0
CHECK_SUBJECTS = {"graph": ("falkordb", "neo4j")}  # a Health check's name -> the engine it probes


class Watch:
    def __init__(self, nc: NatsClient, config: MonitoringConfig, manifest: Manifest, node: str) -> None:
        self.nc = nc
        self.config = config
        self.manifest = manifest
        self.node = node
        self.prometheus = PrometheusApi(config.prometheus_url)
        self.alertmanager = AlertmanagerApi(config.alertmanager_url) if config.alertmanager_url else None
        self.correlator = Correlator(Dependencies.from_manifest(manifest), settle_s=config.settle_s,
                                     resolve_after_s=config.resolve_after_s)
        # A restarted process is not restarted again before its start period is over.
        self.healer = Healer(nc, config.healing, restart_cooldown_s={
            name: float(spec.health.start_period_s) * 1.5 for name, spec in manifest.services.items()})
        self.detectors = {name: Detector(signal) for name, signal in SIGNALS.items()}
        self.actions: dict[str, list[Action]] = {}  # incident id -> its healing actions
        self._failed_scrapes: dict[str, int] = {}
        # Targets never up since monitoring first saw them (a fleet starting): target -> when first
        # seen. A process loading its model is not down until its start period (the manifest's
        # health.start_period_s) is over; restarting it then would only start it again.
        self._starting: dict[str, float] = {}
        self._seen: set[str] = set()
        self._current_targets: set[str] = set()  # instance labels Prometheus scrapes now
        self._current_target_jobs: set[str] = set()
        self._target_nodes: dict[str, tuple[str, str]] = {}  # instance label -> (node, job)
        self._engine_exits: dict[str, tuple[float, Signal]] = {}  # engine -> (fires until, alert)
        self._alertmanager_sent = 0.0
        self._anomaly_observed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._fleet_events: Subscription | None = None
        self.last_error = ""  # why the last cycle could not read Prometheus, for Health

    async def start(self) -> None:
        self._fleet_events = await self.nc.subscribe("bev.events.fleet.>", cb=self._fleet_event)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._fleet_events is not None:
            try:
                await self._fleet_events.unsubscribe()
            except nats.errors.Error as exc:  # the connection is closing anyway
                log.info("fleet events unsubscribe failed", error=str(exc))
        await self.prometheus.close()
        if self.alertmanager is not None:
            await self.alertmanager.close()

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                await self.cycle()
            except Exception as exc:  # one bad cycle must not end the watch; the next one tries again
                log.exception("watch cycle failed", error=f"{type(exc).__name__}: {exc}")
            CYCLE_SECONDS.set(time.monotonic() - began)
            await asyncio.sleep(max(0.0, self.config.interval_s - (time.monotonic() - began)))

    # --- one cycle -----------------------------------------------------------------------------

    async def cycle(self) -> list[Change]:
        now = time.time()
        signals: list[Signal] = []
        # The targets first: the rules' alerts are checked against the list Prometheus scrapes now.
        probes: list[Signal] | BaseException
        try:
            probes = await self._probe_signals(now)
        except MetricsUnavailable as exc:
            probes = exc
        rules, health, anomalies = await asyncio.gather(
            self._rule_signals(), self._health_signals(now), self._anomaly_signals(now), return_exceptions=True)
        for found in (probes, rules, health, anomalies):
            if isinstance(found, MetricsUnavailable):
                self.last_error = str(found)
                signals.append(Signal("watch/prometheus", "PrometheusUnreachable", "probe", "prometheus", self.node,
                                      "critical", str(found), now))
            elif isinstance(found, BaseException):
                raise found
            else:
                signals.extend(found)
        if not isinstance(probes, BaseException):
            self.last_error = ""
        signals.extend(self._supervisor_signals(now))
        changes = self.correlator.update(_unique(signals), now)
        for change in changes:
            if change.kind in ("opened", "updated"):
                for action in await self.healer.heal(change.incident):
                    self.actions.setdefault(change.incident.id, []).append(action)
                    HEALING.labels(action.kind, action.outcome).inc()
                    await self._publish(f"bev.events.alert.action.{action.incident_id}",
                                        {"kind": "healing_action", **asdict(action)})
            await self._publish(f"bev.events.alert.incident.{change.incident.id}",
                                {"kind": f"incident_{change.kind}", "incident": incident_json(change.incident)})
        INCIDENTS_OPEN.set(sum(1 for i in self.correlator.open_incidents() if i.published))
        await self._tell_alertmanager(changes, now)
        await self._jetstream_lag()
        return changes

    async def _probe_signals(self, now: float) -> list[Signal]:
        """A target whose last `down_after` scrapes failed is down (or frozen). Read from Prometheus's
        current target list, not the `up` series: the series of a target that left discovery lingers."""
        signals = []
        targets = await self.prometheus.targets()
        self._current_targets = {t.labels.get("instance", "") for t in targets}
        self._current_target_jobs = {t.labels.get("job", "") for t in targets}
        self._target_nodes = {t.labels.get("instance", ""): (t.labels.get("node", self.node), t.labels.get("job", ""))
                              for t in targets}
        for each in targets:
            target = each.labels.get("instance", "")
            job = each.labels.get("job", "")
            if target not in self._seen:
                self._seen.add(target)
                self._starting[target] = now
            if each.health == "up":
                self._starting.pop(target, None)
            if each.health == "unknown":  # not scraped yet
                continue
            failed = 0 if each.health == "up" else self._failed_scrapes.get(target, 0) + 1
            self._failed_scrapes[target] = failed
            started = self._starting.get(target)
            if started is not None and now - started < self._start_period(job):
                continue
            if failed >= self.config.down_after:
                node = each.labels.get("node", self.node)
                process = each.labels.get("process", job)
                signals.append(Signal(
                    f"probe/InstanceDown/{target}", "InstanceDown", "probe", job, node, "critical",
                    f"{process} on {node} ({target}) failed its last {failed} scrapes: down or frozen"
                    + (f" ({each.last_error})" if each.last_error else ""),
                    now, instance=target, value=0.0, labels=dict(each.labels)))
        return signals

    def _node_starting(self, node: str, now: float) -> bool:
        """Whether a target of `node` was never up since monitoring first saw it and is still within
        its start period (on a multi-node fleet the other nodes may start later than this one)."""
        return any(target in self._starting and now - self._starting[target] < self._start_period(job)
                   for target, (target_node, job) in self._target_nodes.items() if target_node == node)

    def _start_period(self, job: str) -> float:
        service = self.manifest.services.get(job)
        return float(service.health.start_period_s) if service is not None else 0.0

    async def _rule_signals(self) -> list[Signal]:
        signals = []
        for alert in await self.prometheus.alerts():
            labels = alert.labels
            if labels.get("instance") and labels["instance"] not in self._current_targets \
                    and labels.get("job") in self._current_target_jobs:
                continue  # about a target no longer scraped (a fleet restarted on other ports): history
            started = self._starting.get(labels.get("instance", ""))
            if started is not None and time.time() - started < self._start_period(labels.get("job", "")):
                continue  # ServiceDown of a process still in its start period: starting, not down
            if alert.name == "NodeDown" and self._node_starting(labels.get("node", ""), time.time()):
                continue  # a node whose processes have not come up yet (a fleet starting) is not down
            subject = labels.get("service") or labels.get("job", "")
            if labels.get("backend"):
                subject = f"{BACKEND_PREFIX}{labels['backend']}"
            node = labels.get("node", self.node)
            identity = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            signals.append(Signal(
                f"prometheus/{identity}", alert.name, "prometheus", subject, node,
                labels.get("severity", "warning"), alert.annotations.get("summary", alert.name), alert.active_at,
                instance=labels.get("instance", ""), value=alert.value, labels=dict(labels)))
        return signals

    async def _health_signals(self, now: float) -> list[Signal]:
        instances = await discover(self.nc, self.config.discovery_timeout_s)
        signals: list[Signal] = []
        for instance in instances:
            for check in instance.checks:
                if check.get("ok", True):
                    continue
                signals.append(self._check_signal(instance, str(check.get("name", "")),
                                                  str(check.get("detail", "")), now))
        return signals

    def _check_signal(self, instance: Instance, name: str, detail: str, now: float) -> Signal:
        """A failing Health check is about what it probes: an engine, a backend, else the instance."""
        service = self.manifest.services.get(instance.service)
        engines = set(service.engines) if service is not None else set()
        subject, alert = instance.service, "HealthCheckFailing"
        if name.startswith(BACKEND_PREFIX):
            subject, alert = name, "BackendUnhealthy"
        elif name in engines:
            subject, alert = name, "DependencyFailing"
        elif name in CHECK_SUBJECTS:
            probed = [e for e in CHECK_SUBJECTS[name] if e in engines]
            if probed:
                subject, alert = probed[0], "DependencyFailing"
        return Signal(f"health/{instance.instance}/{name}", alert, "health", subject, instance.node, "warning",
                      f"{instance.service} on {instance.node}: check {name} fails: {detail}"[:300], now,
                      instance=instance.instance, labels={"service": instance.service, "check": name})

    async def _fleet_event(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            return
        engine = str(event.get("engine", ""))
        if not engine:
            return
        if msg.subject.endswith("engine_exited") or msg.subject.endswith("engine_restart_failed"):
            when = float(event.get("time", time.time()))
            summary = f"engine {engine} exited (code {event.get('code', '?')}); the supervisor restarts it"
            if msg.subject.endswith("engine_restart_failed"):
                summary = f"engine {engine} failed to restart: {event.get('error', '')}"[:300]
            kept = self._engine_exits.get(engine)
            self._engine_exits[engine] = (when + ENGINE_EXIT_HOLD_S, Signal(
                f"supervisor/EngineDown/{engine}", "EngineDown", "supervisor", engine,
                str(event.get("node") or self.node), "critical",
                summary, kept[1].started_at if kept else when, labels={"engine": engine}))
        elif msg.subject.endswith("engine_restarted") and engine in self._engine_exits:
            _, alert = self._engine_exits[engine]
            self._engine_exits[engine] = (alert.started_at + ENGINE_EXIT_MIN_S, alert)

    def _supervisor_signals(self, now: float) -> list[Signal]:
        for engine, (until, _) in list(self._engine_exits.items()):
            if now >= until:
                del self._engine_exits[engine]
        return [alert for _, alert in self._engine_exits.values()]

    async def _anomaly_signals(self, now: float) -> list[Signal]:
        """Each live signal's latest value through the detector; an open anomaly is a firing alert."""
        window = self.config.rate_window
        # The detectors are tuned for one point per scrape-like step (15 s over a 30 s rate window):
        # fed each 1-5 s cycle, one slow request would be seen in several points in a row.
        observe = now - self._anomaly_observed_at >= self.config.anomaly_every_s
        if observe:
            self._anomaly_observed_at = now
        found: list[Signal] = []
        for kind, alert, expr, subject_of in _anomaly_queries(window):
            detector = self.detectors[kind]
            for sample in await self.prometheus.query(expr) if observe else []:
                if not math.isfinite(sample.value):  # 0/0: no request in the window
                    continue
                subject = subject_of(sample.labels)
                key = f"{alert}/{subject}/{','.join(f'{k}={v}' for k, v in sorted(sample.labels.items()))}"
                event = detector.observe(key, sample.time, sample.value)
                if event is not None and event.state == "open":
                    ANOMALIES.labels(kind).inc()
            for anomaly in detector.open_anomalies():
                alert, subject, _ = anomaly.key.split("/", 2)
                labels = dict(pair.split("=", 1) for pair in anomaly.key.split("/", 2)[2].split(",") if "=" in pair)
                found.append(Signal(
                    f"anomaly/{anomaly.key}", alert, "anomaly", subject, labels.get("node", self.node), "warning",
                    f"{kind} of {subject} is {anomaly.value:.3g}, expected {anomaly.expected:.3g} "
                    f"(band {anomaly.band[0]:.3g}..{anomaly.band[1]:.3g})", anomaly.started_at,
                    value=anomaly.value, labels=labels))
        return found

    # --- telling people ------------------------------------------------------------------------

    async def _publish(self, subject: str, payload: dict[str, Any]) -> None:
        if not self.nc.is_connected:
            log.warning("event not published (NATS unavailable)", subject=subject)
            return
        body = json.dumps({"time": time.time(), **payload}).encode()
        try:
            await asyncio.wait_for(self.nc.jetstream().publish(subject, body), 2.0)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("event not published", subject=subject, error=f"{type(exc).__name__}: {exc}")

    async def _tell_alertmanager(self, changes: list[Change], now: float) -> None:
        """Changed incidents at once; every open one again each `alertmanager_every_s` (Alertmanager
        resolves an alert it has not heard of for its resolve_timeout)."""
        if self.alertmanager is None:
            return
        due = now - self._alertmanager_sent >= self.config.alertmanager_every_s
        incidents = {c.incident.id: c.incident for c in changes}
        if due:
            incidents.update({i.id: i for i in self.correlator.open_incidents() if i.published})
        if not incidents:
            return
        try:
            await self.alertmanager.post_alerts([alertmanager_alert(i) for i in incidents.values()])
        except MetricsUnavailable as exc:
            log.warning("incidents not sent to Alertmanager", error=str(exc))
            return
        if due:
            self._alertmanager_sent = now

    async def _jetstream_lag(self) -> None:
        try:
            jsm = self.nc.jsm()
            for stream in await jsm.streams_info():
                name = stream.config.name or ""
                JS_MESSAGES.labels(name).set(stream.state.messages)
                for consumer in await jsm.consumers_info(name):
                    JS_PENDING.labels(name, consumer.name).set(consumer.num_pending or 0)
                    JS_ACK_PENDING.labels(name, consumer.name).set(consumer.num_ack_pending or 0)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("JetStream lag not read", error=f"{type(exc).__name__}: {exc}")


def _unique(signals: Iterable[Signal]) -> list[Signal]:
    return list({s.key: s for s in signals}.values())


def _anomaly_queries(window: str) -> list[tuple[str, str, str, Any]]:
    """(signal kind, alert name, PromQL, labels -> subject) of every series the detector watches."""
    def service(labels: dict[str, str]) -> str:
        return labels.get("service") or labels.get("job", "")

    def backend(labels: dict[str, str]) -> str:
        return f"{BACKEND_PREFIX}{labels.get('backend', '')}"

    rpc = 'transport="nats"'
    return [
        ("latency", "LatencyAnomaly",
         f"sum by (service, node) (rate(bev_rpc_latency_seconds_sum{{{rpc}}}[{window}]))"
         f" / sum by (service, node) (rate(bev_rpc_latency_seconds_count{{{rpc}}}[{window}]))", service),
        ("error_ratio", "ErrorRatioAnomaly",
         f"sum by (service, node) (rate(bev_rpc_errors_total{{{rpc}}}[{window}]))"
         f" / sum by (service, node) (rate(bev_rpc_requests_total{{{rpc}}}[{window}]))", service),
        ("queue_depth", "QueueAnomaly", "sum by (tier, backend, node) (bev_reasoning_queue_depth)", backend),
        ("queue_depth", "QueueAnomaly", "sum by (job, queue, node) (bev_celery_queue_depth)", service),
        ("tokens_per_second", "BackendLatencyAnomaly",
          # Mean decode speed of streamed requests: 0/0 (no request in the window) is NaN, skipped.
         f"sum by (tier, backend, node) (rate(bev_reasoning_decode_tokens_per_second_sum[{window}]))"
         f" / sum by (tier, backend, node) (rate(bev_reasoning_decode_tokens_per_second_count[{window}]))", backend),
    ]


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def incident_json(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id, "status": incident.status, "root": incident.root, "node": incident.node,
        "severity": incident.severity, "summary": incident.summary, "opened_at": incident.opened_at,
        "updated_at": incident.updated_at, "resolved_at": incident.resolved_at, "affected": incident.affected,
        "merged_into": incident.merged_into,
        "alerts": [{"name": a.name, "source": a.source, "subject": a.subject, "node": a.node,
                    "severity": a.severity, "summary": a.summary, "started_at": a.started_at,
                    "resolved_at": a.resolved_at, "instance": a.instance, "value": a.value}
                   for a in incident.alerts.values()],
    }


def alertmanager_alert(incident: Incident) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {"alertname": "BevIncident", "incident": incident.id, "root": incident.root,
                   "node": incident.node, "severity": incident.severity, "source": "bev-monitoring"},
        "annotations": {"summary": incident.summary, "affected": ", ".join(incident.affected)},
        "startsAt": _iso(incident.opened_at),
    }
    if incident.status == "resolved":
        alert["endsAt"] = _iso(incident.resolved_at)
    return alert
