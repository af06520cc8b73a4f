"""Self-healing against a real reasoning service on NATS (SmolLM2 on llama.cpp): an incident about
an inference backend drains it on every reasoning replica, with the alert as its reason; a failed
action says why in one line."""

from __future__ import annotations

import time

from nats.aio.client import Client as NatsClient

from bev.manifest import load_manifest
from bev.reasoning.v1 import reasoning_pb2
from services.monitoring.correlation import Correlator, Dependencies, Signal
from services.monitoring.healing import Healer
from services.monitoring.settings import HealingConfig
from services.reasoning.testing import ReasoningOnNats

DEPS = Dependencies.from_manifest(load_manifest())


def backend_down(backend: str) -> Signal:
    return Signal(f"prometheus/InferenceBackendDown/{backend}", "InferenceBackendDown", "prometheus",
                  f"backend:{backend}", "thanos", "critical", f"fast backend {backend} is down", 0.0,
                  labels={"backend": backend, "tier": "fast"})


async def test_an_inference_backend_incident_drains_it_on_every_replica(reasoning_on_nats: ReasoningOnNats) -> None:
    backend = reasoning_on_nats.servicer.router.backends[0].name
    healer = Healer(reasoning_on_nats.nc, HealingConfig(drain_s=60))
    incident = Correlator(DEPS, settle_s=0).update([backend_down(backend)], time.time())[0].incident
    assert incident.root == f"backend:{backend}"
    try:
        actions = await healer.heal(incident)
        assert [(a.kind, a.target, a.outcome, a.error) for a in actions] == [("drain", backend, "done", "")]
        status = await reasoning_on_nats.client.RouterStatus(reasoning_pb2.RouterStatusRequest())
        drained = {b.name: b for b in status.backends}[backend]
        assert drained.drained_until > time.time() + 50
        assert drained.drained_reason.startswith("InferenceBackendDown: ")
    finally:
        await reasoning_on_nats.client.DrainBackend(reasoning_pb2.DrainBackendRequest(backend=backend, seconds=0))


async def test_a_failed_action_says_why(reasoning_on_nats: ReasoningOnNats, nats_client: NatsClient) -> None:
    healer = Healer(reasoning_on_nats.nc, HealingConfig())
    incident = Correlator(DEPS, settle_s=0).update([backend_down("no-such-backend")], time.time())[0].incident
    [action] = await healer.heal(incident)
    assert action.outcome == "failed" and "no backend named 'no-such-backend'" in action.error
    # A restart on a node whose supervisor does not answer: one line, not a traceback.
    restart = Signal("probe/x", "InstanceDown", "probe", "avatar", "nowhere", "critical", "down", 0.0,
                     labels={"process": "avatar"})
    incident = Correlator(DEPS, settle_s=0).update([restart], time.time())[0].incident
    [action] = await Healer(nats_client, HealingConfig()).heal(incident)
    assert (action.kind, action.outcome) == ("restart", "failed")
    assert action.error.startswith("the supervisor of node 'nowhere' did not answer")


async def test_the_last_backend_a_tier_can_use_is_never_drained(reasoning_on_nats: ReasoningOnNats) -> None:
    first, second = (b.name for b in reasoning_on_nats.servicer.router.backends[:2])
    client = reasoning_on_nats.client
    await client.DrainBackend(reasoning_pb2.DrainBackendRequest(backend=second, seconds=60, reason="maintenance"))
    try:
        incident = Correlator(DEPS, settle_s=0).update([backend_down(first)], time.time())[0].incident
        [action] = await Healer(reasoning_on_nats.nc, HealingConfig(drain_s=60)).heal(incident)
        assert action.outcome == "failed" and "is the last healthy backend" in action.error, action
        status = await client.RouterStatus(reasoning_pb2.RouterStatusRequest())
        assert not {b.name: b for b in status.backends}[first].drained_until
    finally:
        await client.DrainBackend(reasoning_pb2.DrainBackendRequest(backend=second, seconds=0))
