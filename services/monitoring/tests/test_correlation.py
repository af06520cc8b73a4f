"""Correlation on the real manifest's dependencies: dependants' alerts join their dependency's
incident, incidents settle before they are published, resolve after a quiet time, and re-root
when the dependency's alert comes late; healing plans one action per target and keeps its limits."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from bev.manifest import load_manifest
from services.monitoring.correlation import Correlator, Dependencies, Signal
from services.monitoring.healing import Healer, planned_actions
from services.monitoring.settings import HealingConfig

DEPS = Dependencies.from_manifest(load_manifest())


def alert(name: str, subject: str, node: str = "thanos", at: float = 0.0, **labels: str) -> Signal:
    return Signal(f"{name}/{subject}/{node}/{sorted(labels.items())}", name, "test", subject, node,
                  "critical" if name in ("InstanceDown", "EngineDown") else "warning", f"{name} on {subject}", at,
                  labels=dict(labels))


def test_dependencies_come_from_the_manifest() -> None:
    assert {"postgres", "reasoning", "embeddings", "collectors"} <= DEPS.closure("swarm")
    assert DEPS.depends("swarm", "postgres") and not DEPS.depends("postgres", "swarm")
    assert DEPS.depends("swarm", "backend:llama.cpp")  # through reasoning
    assert DEPS.closure("monitoring") & {"swarm", "reasoning"} == set()  # `calls: all` is not a dependency
    assert DEPS.root("swarm", {"swarm", "embeddings", "postgres"}) == "postgres"
    assert DEPS.root("swarm", {"swarm", "reasoning"}) == "reasoning"
    assert DEPS.root("reasoning", {"reasoning", "postgres"}) == "reasoning"  # reasoning uses no database


def test_a_dead_database_is_one_incident_with_its_dependants_affected() -> None:
    correlator = Correlator(DEPS, settle_s=2, resolve_after_s=10)
    firing = [alert("EngineDown", "postgres"), alert("HighErrorRatio", "swarm"),
              alert("HighErrorRatio", "embeddings"), alert("DependencyFailing", "postgres", node="oracle1")]
    assert correlator.update(firing, 0.0) == []  # settling
    changes = correlator.update(firing, 2.0)
    assert [(c.kind, c.incident.root) for c in changes] == [("opened", "postgres")]
    incident = changes[0].incident
    assert incident.node == "thanos" and incident.severity == "critical"
    assert incident.affected == ["embeddings", "swarm"]
    assert len(correlator.open_incidents()) == 1


def test_a_late_root_absorbs_its_dependants_before_anyone_hears() -> None:
    correlator = Correlator(DEPS, settle_s=2, resolve_after_s=10)
    assert correlator.update([alert("HighErrorRatio", "swarm")], 0.0) == []
    changes = correlator.update([alert("HighErrorRatio", "swarm"), alert("EngineDown", "postgres")], 1.0)
    assert changes == []
    changes = correlator.update([alert("HighErrorRatio", "swarm"), alert("EngineDown", "postgres")], 2.5)
    assert [(c.kind, c.incident.root, c.incident.affected) for c in changes] == [("opened", "postgres", ["swarm"])]
    assert len(correlator.incidents) == 1


def test_a_published_incident_merged_later_is_resolved_with_a_pointer() -> None:
    correlator = Correlator(DEPS, settle_s=0, resolve_after_s=10)
    first = correlator.update([alert("HighErrorRatio", "swarm")], 0.0)
    assert [(c.kind, c.incident.root) for c in first] == [("opened", "swarm")]
    changes = correlator.update([alert("HighErrorRatio", "swarm"), alert("EngineDown", "postgres")], 1.0)
    kinds = {(c.kind, c.incident.root) for c in changes}
    # The swarm incident is re-rooted at postgres (same id), so nothing was announced twice.
    assert kinds == {("updated", "postgres")}
    assert changes[0].incident.id == first[0].incident.id


def test_an_incident_resolves_after_a_quiet_time_and_blips_never_publish() -> None:
    correlator = Correlator(DEPS, settle_s=2, resolve_after_s=5)
    down = [alert("InstanceDown", "avatar", process="avatar")]
    correlator.update(down, 0.0)
    opened = correlator.update(down, 2.0)
    assert [c.kind for c in opened] == ["opened"]
    assert correlator.update([], 3.0) == []  # quiet, not long enough
    resolved = correlator.update([], 8.0)
    assert [(c.kind, c.incident.status) for c in resolved] == [("resolved", "resolved")]
    assert all(a.resolved_at == 3.0 for a in resolved[0].incident.alerts.values())
    # A one-cycle blip: never published, then forgotten.
    correlator.update([alert("InstanceDown", "swarm", process="swarm")], 20.0)
    assert correlator.update([], 30.0) == []
    assert [i.root for i in correlator.incidents.values()] == ["avatar"]


def test_separate_faults_are_separate_incidents_by_root_and_node() -> None:
    correlator = Correlator(DEPS, settle_s=0, resolve_after_s=5)
    changes = correlator.update([alert("InstanceDown", "avatar", node="starlord", process="avatar"),
                                 alert("InstanceDown", "reasoning", node="thanos", process="reasoning"),
                                 alert("InstanceDown", "reasoning", node="starlord", process="reasoning")], 0.0)
    assert sorted((c.incident.root, c.incident.node) for c in changes) == [
        ("avatar", "starlord"), ("reasoning", "starlord"), ("reasoning", "thanos")]


def test_healing_plans_one_action_per_target() -> None:
    correlator = Correlator(DEPS, settle_s=0)
    changes = correlator.update([
        alert("InstanceDown", "swarm", process="swarm"),
        Signal("x", "InstanceDown", "prometheus", "swarm", "thanos", "critical", "again", 0.0,
               labels={"process": "swarm"}),
        alert("InferenceBackendDown", "backend:vllm-thanos"),
        alert("CollectorFailing", "collectors", collector="dns"),
        alert("InstanceDown", "prometheus", process="prometheus"),
    ], 0.0)
    planned = sorted((a.kind, a.target) for c in changes for a in planned_actions(c.incident))
    assert planned == [("drain", "vllm-thanos"), ("pause", "dns"), ("restart", "swarm")]


async def test_healing_keeps_its_limits_in_dry_run(nats_client: NatsClient) -> None:
    healer = Healer(nats_client, HealingConfig(dry_run=True, max_actions=2, per_s=600, cooldown_s=600))
    correlator = Correlator(DEPS, settle_s=0)
    changes = correlator.update([alert("InstanceDown", s, process=s) for s in ("swarm", "avatar", "gateway")], 0.0)
    outcomes = [(a.target, a.outcome) for c in changes for a in await healer.heal(c.incident)]
    assert [o for _, o in outcomes] == ["dry_run", "dry_run", "over_limit"]
    # The same targets again at once: in their cooldown, nothing is repeated.
    assert [a for c in changes for a in await healer.heal(c.incident)] == []
    assert len(healer.history) == 3
