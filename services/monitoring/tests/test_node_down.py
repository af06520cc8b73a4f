"""A lost node on the real manifest's dependencies: its NodeDown alert roots every alert of that
node (and every alert rooted at something on it) in one incident, "node starlord down"; incidents
of its processes opened before it are merged into it; once the node is back what still fires is
news of its own. Healing never asks a lost node's supervisor to restart anything, and never
drains the last backend a tier can still use."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bev.common.v1 import common_pb2
from bev.manifest import load_manifest
from bev.reasoning.v1 import reasoning_pb2
from services.monitoring.correlation import Correlator, Dependencies, Signal
from services.monitoring.healing import RESTART_SUBJECT, Healer, _still_serving
from services.monitoring.settings import HealingConfig

DEPS = Dependencies.from_manifest(load_manifest())


def node_down(node: str, targets: int = 4) -> Signal:
    # As the watch reads deploy/oracle1/rules/alerts.yml's NodeDown: `service` (the subject) is the node.
    return Signal(f"prometheus/NodeDown/{node}", "NodeDown", "prometheus", node, node, "critical",
                  f"node {node} is down", 0.0, value=float(targets),
                  labels={"alertname": "NodeDown", "node": node, "service": node, "severity": "critical"})


def instance_down(process: str, node: str) -> Signal:
    return Signal(f"probe/InstanceDown/{process}@{node}", "InstanceDown", "probe", process.split("-")[0], node,
                  "critical", f"{process} on {node} failed its last 2 scrapes", 0.0,
                  instance=f"{node}:{process}", labels={"process": process, "node": node})


def alert(name: str, subject: str, node: str, severity: str = "warning", **labels: str) -> Signal:
    return Signal(f"prometheus/{name}/{subject}/{node}", name, "prometheus", subject, node, severity,
                  f"{name} on {subject}", 0.0, labels=dict(labels))


def lost_starlord() -> list[Signal]:
    """One cycle's alerts with starlord gone (fresh objects each cycle, as the watch builds them)."""
    return [
        node_down("starlord"),
        instance_down("avatar", "starlord"),
        instance_down("reasoning", "starlord"),
        alert("EngineDown", "vllm", "starlord", "critical"),
        alert("InferenceBackendDown", "backend:vllm-starlord", "starlord", "critical", backend="vllm-starlord"),
        # Seen from thanos: the swarm's calls to reasoning fail; rooted at reasoning, on starlord.
        alert("HighErrorRatio", "swarm", "thanos"),
    ]


def test_a_lost_node_is_one_incident_titled_by_the_node() -> None:
    correlator = Correlator(DEPS, settle_s=2, resolve_after_s=10)
    unrelated = instance_down("gateway", "thanos")
    assert correlator.update([*lost_starlord(), unrelated], 0.0) == []  # settling
    changes = correlator.update([*lost_starlord(), instance_down("gateway", "thanos")], 2.0)
    assert sorted((c.kind, c.incident.root, c.incident.node) for c in changes) == [
        ("opened", "gateway", "thanos"), ("opened", "node:starlord", "starlord")]
    [node] = [c.incident for c in changes if c.incident.root == "node:starlord"]
    assert node.severity == "critical"
    assert len(node.firing()) == len(lost_starlord())
    # The node is the root, not something it affects; its processes, engine, backend and the
    # swarm on thanos that calls them are.
    assert node.affected == ["avatar", "backend:vllm-starlord", "reasoning", "swarm", "vllm"]
    assert node.summary == ("node starlord down: EngineDown, HighErrorRatio, InferenceBackendDown, InstanceDown,"
                            " NodeDown; affects avatar, backend:vllm-starlord, reasoning, swarm, vllm")


def test_process_incidents_opened_before_the_node_alert_merge_into_it() -> None:
    correlator = Correlator(DEPS, settle_s=0, resolve_after_s=10)
    # The probes see the processes down a cycle before the rule's `for:` is over.
    first = correlator.update([instance_down("avatar", "starlord"), instance_down("reasoning", "starlord")], 0.0)
    assert sorted((c.kind, c.incident.root) for c in first) == [("opened", "avatar"), ("opened", "reasoning")]
    changes = correlator.update(lost_starlord(), 5.0)
    kinds = sorted((c.kind, c.incident.root) for c in changes)
    # One is re-rooted at the node (its id kept: nothing announced twice), the other resolved with
    # a pointer to it.
    assert kinds == [("resolved", "avatar"), ("updated", "node:starlord")] or \
        kinds == [("resolved", "reasoning"), ("updated", "node:starlord")]
    [updated] = [c.incident for c in changes if c.kind == "updated"]
    [merged] = [c.incident for c in changes if c.kind == "resolved"]
    assert updated.id in {c.incident.id for c in first} and updated.opened_at == 0.0
    assert merged.merged_into == updated.id
    assert merged.summary == f"merged into incident {updated.id} (node:starlord on starlord)"
    assert [(i.root, i.node) for i in correlator.open_incidents()] == [("node:starlord", "starlord")]


def test_once_the_node_is_back_what_still_fires_is_an_incident_of_its_own() -> None:
    correlator = Correlator(DEPS, settle_s=2, resolve_after_s=10)
    correlator.update(lost_starlord(), 0.0)
    [node] = [c.incident for c in correlator.update(lost_starlord(), 2.0)]
    # starlord answers again; its avatar did not come back.
    assert correlator.update([instance_down("avatar", "starlord")], 5.0) == []
    changes = correlator.update([instance_down("avatar", "starlord")], 7.0)
    assert [(c.kind, c.incident.root, c.incident.node) for c in changes] == [("opened", "avatar", "starlord")]
    assert changes[0].incident.id != node.id
    assert node.root == "node:starlord" and node.status == "open"  # never re-rooted at the avatar
    resolved = correlator.update([instance_down("avatar", "starlord")], 15.0)
    assert [(c.kind, c.incident.id) for c in resolved] == [("resolved", node.id)]
    assert node.summary.startswith("node starlord down: ")
    assert all(a.resolved_at == 5.0 for a in node.alerts.values())


async def test_restarts_on_a_lost_node_are_skipped_and_its_supervisor_is_never_asked(
        nats_client: NatsClient) -> None:
    asked: list[str] = []

    async def supervisor(msg: Msg) -> None:  # would answer, were a request sent to it
        asked.append(msg.subject)
        await msg.respond(json.dumps({"ok": True}).encode())

    subscription = await nats_client.subscribe(RESTART_SUBJECT.format(node="*"), cb=supervisor)
    try:
        healer = Healer(nats_client, HealingConfig(max_actions=2, per_s=600, cooldown_s=600))
        correlator = Correlator(DEPS, settle_s=0, resolve_after_s=10)
        [change] = correlator.update(lost_starlord(), 0.0)
        actions = await healer.heal(change.incident)
        assert sorted((a.kind, a.target, a.node, a.outcome) for a in actions) == [
            ("drain", "vllm-starlord", "starlord", "failed"),  # no reasoning replica on this bus to ask
            ("restart", "avatar", "starlord", "skipped"),
            ("restart", "reasoning", "starlord", "skipped")]
        skipped = [a for a in actions if a.outcome == "skipped"]
        assert {a.error for a in skipped} == {
            "node 'starlord' is down: its supervisor (bev.supervisor.starlord.restart) cannot answer"}
        assert all(a.reason.startswith("InstanceDown: ") and a.incident_id == change.incident.id for a in skipped)
        # Recorded once: the incident's next update skips them silently.
        assert await healer.heal(change.incident) == []
        assert [a.outcome for a in healer.history].count("skipped") == 2

        # Skips took no place in the window (the drain took one of two) and left no cooldown: once
        # starlord is back, its avatar is restarted through its supervisor.
        back = Correlator(DEPS, settle_s=0).update([instance_down("avatar", "starlord")], 20.0)
        [restart] = await healer.heal(back[0].incident)
        assert (restart.kind, restart.target, restart.outcome, restart.error) == ("restart", "avatar", "done", "")
        await nats_client.flush()
        assert asked == ["bev.supervisor.starlord.restart"]  # that one only: none while the node was down
    finally:
        await subscription.unsubscribe()
        await asyncio.sleep(0)


def backend(name: str, tier: common_pb2.Tier.ValueType, node: str, healthy: bool = True) -> reasoning_pb2.BackendStatus:
    return reasoning_pb2.BackendStatus(name=name, tier=tier, node=node, healthy=healthy)


def test_the_last_backend_a_tier_can_use_is_never_drained_when_a_node_is_lost() -> None:
    fast, balanced = common_pb2.TIER_FAST, common_pb2.TIER_BALANCED
    # starlord is lost: its backend is unhealthy in the router's status; thanos's is slow.
    status = reasoning_pb2.RouterStatusResponse(backends=[
        backend("vllm-thanos", balanced, "thanos"), backend("vllm-starlord", balanced, "starlord", healthy=False)])
    assert _still_serving(status, "vllm-thanos") == (
        "not drained: vllm-thanos is the last healthy backend its tier (balanced) or a lower one can use")
    # The lost node's own backend can go: it serves nothing anyway.
    assert _still_serving(status, "vllm-starlord") is None
    # A healthy fast backend elsewhere still serves the balanced tier's requests (fallback): drainable.
    status.backends.append(backend("llama.cpp", fast, "oracle1"))
    assert _still_serving(status, "vllm-thanos") is None
