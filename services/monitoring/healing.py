"""Self-healing, bounded and audited.

Three actions, each taken for an incident's alert that calls for it:
- restart: a service process whose scrapes fail (down or frozen) is SIGKILLed by its node's
  supervisor, which starts it again (`bev.supervisor.<node>.restart`, bev.supervisor);
- drain: an inference backend that is down or anomalous leaves every reasoning replica's routing
  for `drain_s` (reasoning DrainBackend, each replica addressed by instance);
- pause: a collector whose runs keep failing is paused for `pause_s` (collectors PauseCollector,
  shared by every replica and worker through Redis).
At most `max_actions` per `per_s` window fleet-wide, never the same target twice within
`cooldown_s`; in dry-run mode each action is recorded as what would have been done. A restart on
a node that is down (its NodeDown alert fires in the incident) is skipped, with the reason: the
node's supervisor cannot answer, and waiting for it would hold the watch cycle. Every action,
taken or not, is returned for the incident and published as an event with its reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.fleet import discover
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import RpcError
from bev.rpc.nats_transport import NatsTransport
from bev.telemetry import get_logger
from bev.vocab import Tier
from services.monitoring.correlation import BACKEND_PREFIX, NODE_DOWN, Incident, Signal
from services.monitoring.settings import HealingConfig

log = get_logger(__name__)

RESTART_SUBJECT = "bev.supervisor.{node}.restart"  # bev.supervisor.RESTART_SUBJECT, served by each node's supervisor
RESTART_ON = {"InstanceDown", "ServiceDown"}  # alert names whose process is restarted
DRAIN_ON = {"InferenceBackendDown", "BackendUnhealthy", "BackendLatencyAnomaly"}
PAUSE_ON = {"CollectorFailing"}


@dataclass
class Action:
    kind: str      # restart, drain, pause
    target: str    # process, backend or collector
    node: str
    reason: str
    incident_id: str
    instance: str = ""  # the scrape target of a restarted process (host:port)
    outcome: str = ""  # done, failed, dry_run, over_limit, skipped
    error: str = ""     # why it failed, was refused or skipped
    at: float = 0.0


def planned_actions(incident: Incident) -> list[Action]:
    """What the incident's firing alerts call for, one action per target."""
    actions: dict[tuple[str, str, str], Action] = {}
    for alert in incident.firing():
        action = _action_for(alert, incident.id)
        if action is not None:
            actions.setdefault((action.kind, action.target, action.node), action)
    return list(actions.values())


def _action_for(alert: Signal, incident_id: str) -> Action | None:
    reason = f"{alert.name}: {alert.summary}"
    if alert.name in RESTART_ON and alert.labels.get("process"):
        process = alert.labels["process"]
        if process in ("prometheus", "alertmanager", "monitoring"):
            # Engines: their supervisor restarts them when they exit. Monitoring: one that can ask
            # is not down, and a restart would only forget its incidents.
            return None
        return Action("restart", process, alert.node, reason, incident_id, instance=alert.instance)
    if alert.name in DRAIN_ON and alert.subject.startswith(BACKEND_PREFIX):
        return Action("drain", alert.subject.removeprefix(BACKEND_PREFIX), alert.node, reason, incident_id)
    if alert.name in PAUSE_ON and alert.labels.get("collector"):
        return Action("pause", alert.labels["collector"], alert.node, reason, incident_id)
    return None


class Healer:
    def __init__(self, nc: NatsClient, config: HealingConfig, restart_cooldown_s: dict[str, float] | None = None) -> None:
        self.nc = nc
        self.config = config
        self.restart_cooldown_s = restart_cooldown_s or {}  # service -> at least this between restarts
        self._taken: deque[float] = deque()  # when each action of the current window was taken
        self._last: dict[tuple[str, str, str], float] = {}  # (kind, target, node) -> when last acted on
        # When each action was last skipped: recorded once per cooldown, and no cooldown of its own
        # for the restart the node may need once it is back.
        self._skipped: dict[tuple[str, str, str], float] = {}
        self.history: deque[Action] = deque(maxlen=200)

    def _cooling(self, action: Action, now: float) -> bool:
        last = self._last.get((action.kind, action.target, action.node))
        cooldown = self.config.cooldown_s
        if action.kind == "restart":  # "<service>" or "<service>-<worker>"
            cooldown = max(cooldown, self.restart_cooldown_s.get(action.target.split("-")[0], 0.0))
        return last is not None and now - last < cooldown

    async def heal(self, incident: Incident) -> list[Action]:
        """Take what the incident calls for, within the limits; returns the actions taken or refused
        (a target in its cooldown is skipped silently: it was acted on a moment ago)."""
        if not self.config.enabled:
            return []
        done: list[Action] = []
        now = time.time()
        down_nodes = {a.node for a in incident.firing() if a.name == NODE_DOWN}
        for action in planned_actions(incident):
            if self._cooling(action, now):
                continue
            key = (action.kind, action.target, action.node)
            if action.kind == "restart" and action.node in down_nodes:
                skipped = self._skipped.get(key)
                if skipped is not None and now - skipped < self.config.cooldown_s:
                    continue
                self._skipped[key] = now
                action.at, action.outcome = now, "skipped"
                action.error = (f"node {action.node!r} is down: its supervisor "
                                f"({RESTART_SUBJECT.format(node=action.node)}) cannot answer")
                self._record(action)
                done.append(action)
                continue
            while self._taken and now - self._taken[0] > self.config.per_s:
                self._taken.popleft()
            action.at = now
            self._last[key] = now
            if len(self._taken) >= self.config.max_actions:
                action.outcome = "over_limit"
                action.error = f"{self.config.max_actions} actions already taken in the last {self.config.per_s:g} s"
            elif self.config.dry_run:
                action.outcome = "dry_run"
                self._taken.append(now)
            else:
                self._taken.append(now)
                try:
                    await self._take(action)
                    action.outcome = "done"
                except HealingFailed as exc:
                    action.outcome, action.error = "failed", str(exc)
            self._record(action)
            done.append(action)
        return done

    def _record(self, action: Action) -> None:
        log.warning("self-healing", kind=action.kind, target=action.target, node=action.node,
                    outcome=action.outcome, reason=action.reason, error=action.error)
        self.history.append(action)

    async def _take(self, action: Action) -> None:
        match action.kind:
            case "restart":
                await self._restart(action)
            case "drain":
                await self._drain(action)
            case "pause":
                await self._pause(action)

    async def _restart(self, action: Action) -> None:
        payload = json.dumps({"process": action.target, "reason": action.reason, "by": "monitoring"}).encode()
        try:
            reply = await self.nc.request(RESTART_SUBJECT.format(node=action.node), payload, timeout=5)
        except (nats.errors.Error, TimeoutError) as exc:
            raise HealingFailed(f"the supervisor of node {action.node!r} did not answer: {type(exc).__name__}") from None
        answer = json.loads(reply.data)
        if not answer.get("ok"):
            raise HealingFailed(str(answer.get("error", "refused")))

    async def _drain(self, action: Action) -> None:
        """Every reasoning replica routes on its own: each one is asked, by instance."""
        instances = [i for i in await discover(self.nc, 1.0) if i.service == "reasoning"]
        if not instances:
            raise HealingFailed("no reasoning instance answered discovery")
        request = reasoning_pb2.DrainBackendRequest(backend=action.target, seconds=self.config.drain_s,
                                                    reason=action.reason)
        errors: list[str] = []

        async def drain_one(instance: str) -> None:
            client = ReasoningClient(NatsTransport(self.nc, instance=instance), timeout_s=5)
            try:
                status = await client.RouterStatus(reasoning_pb2.RouterStatusRequest())
                left = _still_serving(status, action.target)
                if left is not None:
                    errors.append(f"{instance}: {left}")
                    return
                await client.DrainBackend(request)
            except RpcError as exc:
                errors.append(f"{instance}: {exc}")

        await asyncio.gather(*(drain_one(i.instance) for i in instances))
        if len(errors) == len(instances):
            raise HealingFailed("; ".join(errors))

    async def _pause(self, action: Action) -> None:
        client = CollectorsClient.over_nats(self.nc, timeout_s=5)
        try:
            await client.PauseCollector(collectors_pb2.PauseCollectorRequest(
                collector=action.target, seconds=self.config.pause_s, reason=action.reason, by="monitoring"))
        except RpcError as exc:
            raise HealingFailed(str(exc)) from None


def _still_serving(status: reasoning_pb2.RouterStatusResponse, backend: str) -> str | None:
    """Why draining `backend` must not happen (None: it may): a drain that leaves its tier and every
    lower one without a healthy, undrained backend turns a slow or flaky backend into no answer."""
    target = next((b for b in status.backends if b.name == backend), None)
    if target is None:
        return None  # DrainBackend answers NOT_FOUND with the known names
    tiers = Tier.from_proto(target.tier, Tier.FAST).and_lower()
    others = [b for b in status.backends if b.name != backend and b.healthy and not b.drained_until
              and Tier.from_proto(b.tier, Tier.FAST) in tiers]
    if others:
        return None
    return f"not drained: {backend} is the last healthy backend its tier ({tiers[0]}) or a lower one can use"


class HealingFailed(Exception):
    """An action could not be taken; str() is one line."""
