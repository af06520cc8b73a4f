"""Alerts grouped into incidents: by dependency, node and time window.

The manifest says what each service uses (its engines and the services it calls). An alert about
a subject (a service, an engine, an inference backend) whose dependency also alerts belongs to the
dependency's incident: PostgreSQL down is one incident rooted at `postgres` with the swarm's and
the embeddings' error alerts in it as `affected`, not one incident per dependant. The root is the
deepest alerting dependency; incidents are keyed by (root, the root's node).

A lost node (NodeDown: every scrape target labelled with it fails) is the root of every alert
with its node label, process faults included, and of every alert rooted at something on it: one
incident `node:<node>` ("node starlord down"), not one per process. When the node is back, the
alerts still firing open incidents of their own; the node's resolves after its quiet time.

Incidents settle before anyone hears of them: one is published (events, Alertmanager, the list)
only after `settle_s`, so a root whose alert arrives a moment after its dependants' (a dead
database is noticed by its callers first) absorbs them instead of leaving a second incident. One
merged after it was published is resolved with a note saying where it went. An incident resolves
after `resolve_after_s` with none of its alerts firing; an alert that fires again within
`window_s` of an incident's last activity reopens nothing: it opens a new incident only after the
old one resolved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bev.manifest import ALL_SERVICES, Manifest

SEVERITY_ORDER = {"critical": 3, "warning": 2, "info": 1}
BACKEND_PREFIX = "backend:"  # an inference backend of the reasoning service: "backend:<name>"
# A process that is down is a fault of its own, not a symptom of what it depends on: these alerts
# are never re-rooted under a dependency (others may be rooted at them).
FAULTS = frozenset({"InstanceDown", "ServiceDown", "EngineDown"})
NODE_DOWN = "NodeDown"  # deploy/oracle1/rules/alerts.yml: every target of a node is down
NODE_PREFIX = "node:"   # the root of a lost node's incident: "node:<node>"


@dataclass
class Signal:
    """One firing alert, from any source, as the correlator sees it."""

    key: str        # identity across cycles: source/name/subject/node/instance
    name: str
    source: str     # prometheus, probe, anomaly, supervisor, health
    subject: str    # a service, an engine, or backend:<name>
    node: str
    severity: str
    summary: str
    started_at: float
    instance: str = ""
    value: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    resolved_at: float = 0.0


@dataclass
class Incident:
    id: str
    root: str
    node: str
    opened_at: float
    updated_at: float
    last_active: float  # when an alert of it last fired
    alerts: dict[str, Signal] = field(default_factory=dict)
    severity: str = "info"
    summary: str = ""
    status: str = "open"  # open, resolved
    resolved_at: float = 0.0
    published: bool = False
    merged_into: str = ""

    @property
    def affected(self) -> list[str]:
        # A NodeDown alert's subject is the node itself (its `service` label), not something affected.
        return sorted({a.subject for a in self.alerts.values() if a.name != NODE_DOWN} - {self.root})

    def firing(self) -> list[Signal]:
        return [a for a in self.alerts.values() if not a.resolved_at]

    def firing_keys(self) -> set[str]:
        return {a.key for a in self.firing()}


class Dependencies:
    """What depends on what, from the manifest: services on their engines and callees; the
    reasoning service on its inference backends (subjects `backend:<name>`)."""

    def __init__(self, direct: Mapping[str, Iterable[str]]) -> None:
        self.direct = {subject: set(deps) for subject, deps in direct.items()}

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Dependencies:
        direct: dict[str, set[str]] = {}
        for spec in manifest.services.values():
            # `calls: all` (monitoring) asks everyone for health: it does not depend on them.
            calls = [] if spec.calls == ALL_SERVICES else list(spec.calls)
            direct[spec.name] = set(spec.engines) | set(calls) | set(spec.inference)
        return cls(direct)

    def closure(self, subject: str) -> set[str]:
        """Everything `subject` depends on, directly or not (not itself)."""
        seen: set[str] = set()
        stack = list(self._direct_of(subject))
        while stack:
            each = stack.pop()
            if each in seen or each == subject:
                continue
            seen.add(each)
            stack.extend(self._direct_of(each))
        return seen

    def is_service(self, subject: str) -> bool:
        return subject in self.direct

    def _direct_of(self, subject: str) -> set[str]:
        return self.direct.get(subject, set())

    def depends(self, subject: str, on: str) -> bool:
        if on.startswith(BACKEND_PREFIX):  # every backend serves reasoning
            return subject == "reasoning" or "reasoning" in self.closure(subject)
        return on in self.closure(subject)

    def root(self, subject: str, alerting: set[str]) -> str:
        """The deepest alerting subject `subject` depends on, or `subject` itself."""
        under = [d for d in alerting if d != subject and self.depends(subject, d)]
        deepest = [d for d in under if not any(o != d and self.depends(d, o) for o in under)]
        return sorted(deepest)[0] if deepest else subject


@dataclass
class Change:
    kind: str  # opened, updated, resolved
    incident: Incident


class Correlator:
    def __init__(self, dependencies: Dependencies, *, settle_s: float = 2.0, resolve_after_s: float = 15.0,
                 keep: int = 500) -> None:
        self.dependencies = dependencies
        self.settle_s = settle_s
        self.resolve_after_s = resolve_after_s
        self.keep = keep  # resolved incidents kept for the list
        self.incidents: dict[str, Incident] = {}  # id -> incident, oldest first

    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents.values() if i.status == "open"]

    def _open_by_key(self) -> dict[tuple[str, str], Incident]:
        return {(i.root, i.node): i for i in self.open_incidents()}

    def update(self, firing: Iterable[Signal], now: float) -> list[Change]:
        """Fold this cycle's firing alerts in; returns what changed for published incidents."""
        alerts = {a.key: a for a in firing}
        alerting = {a.subject for a in alerts.values() if a.name != NODE_DOWN}
        down_nodes = {a.node for a in alerts.values() if a.name == NODE_DOWN}
        groups: dict[tuple[str, str], list[Signal]] = {}
        for alert in alerts.values():
            if alert.node in down_nodes:  # on a lost node: a symptom of it, faults included
                groups.setdefault((node_root(alert.node), alert.node), []).append(alert)
                continue
            root = alert.subject if alert.name in FAULTS else self.dependencies.root(alert.subject, alerting)
            # Where the root is: the node of its most severe alert (an engine's exit is reported by
            # the supervisor of the node it runs on; its callers elsewhere only see it fail).
            root_nodes = [a.node for a in sorted((a for a in alerts.values() if a.subject == root),
                                                 key=lambda a: (-SEVERITY_ORDER.get(a.severity, 0), a.node))]
            # A service's replicas fail apart (one incident per node); an engine or a backend is one
            # thing whoever observes it, so every alert about it lands in one incident.
            per_node = root == alert.subject and self.dependencies.is_service(root)
            node = alert.node if per_node or not root_nodes else root_nodes[0]
            if node in down_nodes:  # seen from elsewhere, rooted at something on a lost node
                root = node_root(node)
            groups.setdefault((root, node), []).append(alert)

        changes: list[Change] = []
        by_key = self._open_by_key()
        touched: set[str] = set()
        for (root, node), members in groups.items():
            # A node incident takes its node's incidents over, never the reverse: alerts still firing
            # once the node is back are news of their own, and the node's incident resolves.
            holders = {i.id: i for a in members for i in self.open_incidents() if a.key in i.alerts
                       and (is_node_root(root) or not is_node_root(i.root))}
            incident = by_key.get((root, node))
            if incident is None:
                # Re-rooting: the oldest incident already holding one of these alerts takes the group.
                incident = min(holders.values(), key=lambda i: i.opened_at) if holders else None
                if incident is None:
                    incident = Incident(uuid.uuid4().hex[:12], root, node, opened_at=now, updated_at=now, last_active=now)
                    self.incidents[incident.id] = incident
                incident.root, incident.node = root, node
            for other in holders.values():
                if other.id != incident.id:
                    changes.extend(self._merge(other, incident, now))
            before = (incident.firing_keys(), incident.severity, incident.root)
            for alert in members:
                kept = incident.alerts.get(alert.key)
                if kept is not None and not kept.resolved_at:
                    alert.started_at = kept.started_at  # the same alert, still firing
                incident.alerts[alert.key] = alert
            for key, kept in incident.alerts.items():
                if key not in alerts and not kept.resolved_at:
                    kept.resolved_at = now
            incident.last_active = now
            incident.severity = max((a.severity for a in incident.firing()), key=lambda s: SEVERITY_ORDER.get(s, 0))
            incident.summary = _summary(incident)
            touched.add(incident.id)
            if (incident.firing_keys(), incident.severity, incident.root) != before:
                incident.updated_at = now
                if incident.published:
                    changes.append(Change("updated", incident))

        for incident in self.open_incidents():
            if incident.id not in touched:
                for alert in incident.firing():
                    alert.resolved_at = now
                if now - incident.last_active >= self.resolve_after_s:
                    incident.status, incident.resolved_at, incident.updated_at = "resolved", now, now
                    if incident.published:
                        changes.append(Change("resolved", incident))
                    else:  # a blip that never settled: nobody heard of it
                        del self.incidents[incident.id]
            elif not incident.published and now - incident.opened_at >= self.settle_s:
                incident.published = True
                changes.append(Change("opened", incident))
        self._forget_old()
        return changes

    def _merge(self, gone: Incident, into: Incident, now: float) -> list[Change]:
        for key, alert in gone.alerts.items():
            into.alerts.setdefault(key, alert)
        into.opened_at = min(into.opened_at, gone.opened_at)
        if not gone.published:
            del self.incidents[gone.id]
            return []
        into.published = True  # it carries on what was already announced
        gone.status, gone.resolved_at, gone.updated_at, gone.merged_into = "resolved", now, now, into.id
        gone.summary = f"merged into incident {into.id} ({into.root} on {into.node})"
        return [Change("resolved", gone)]

    def _forget_old(self) -> None:
        resolved = [i for i in self.incidents.values() if i.status == "resolved"]
        for incident in resolved[: max(0, len(resolved) - self.keep)]:
            del self.incidents[incident.id]


def node_root(node: str) -> str:
    return f"{NODE_PREFIX}{node}"


def is_node_root(root: str) -> bool:
    return root.startswith(NODE_PREFIX)


def _summary(incident: Incident) -> str:
    names = sorted({a.name for a in incident.firing()}) or sorted({a.name for a in incident.alerts.values()})
    affected = incident.affected
    where = f"node {incident.node} down" if is_node_root(incident.root) else f"{incident.root} on {incident.node}"
    text = f"{where}: {', '.join(names)}"
    if affected:
        text += f"; affects {', '.join(affected)}"
    return text
