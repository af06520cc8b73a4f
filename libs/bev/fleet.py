"""What is running: every service instance found through NATS micro discovery ($SRV.INFO/STATS),
with each instance's own Health. Used by `bev status`, the monitoring service and the gateway."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient

from bev.common.v1 import common_pb2
from bev.rpc.client import Client, Transport
from bev.rpc.errors import RpcError
from bev.rpc.nats_transport import NatsTransport

_STATUS_NAMES = {
    common_pb2.HealthResponse.STATUS_SERVING: "serving",
    common_pb2.HealthResponse.STATUS_DEGRADED: "degraded",
    common_pb2.HealthResponse.STATUS_NOT_SERVING: "not_serving",
    common_pb2.HealthResponse.STATUS_UNSPECIFIED: "unknown",
}


@dataclass
class Instance:
    service: str
    instance: str
    node: str
    state: str  # serving, degraded, not_serving, unreachable
    uptime_s: float
    requests: int
    errors: int
    rpc_rate: float  # requests/s over the last minute
    grpc_address: str
    metrics_address: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _gather(nc: NatsClient, subject: str, timeout_s: float) -> list[dict[str, Any]]:
    """Scatter-gather: one request, every instance answers; collect until quiet or timeout."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: list[dict[str, Any]] = []
    try:
        await nc.publish(subject, b"", reply=inbox)
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=remaining)
            except TimeoutError:
                break
            if msg.data:
                replies.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return replies


def client_class(service: str) -> type[Client]:
    """The generated typed client of a fleet service, by short name (bev/<service>/v1/<service>_rpc.py)."""
    module = importlib.import_module(f"bev.{service}.v1.{service}_rpc")
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Client) and value is not Client:
            return value
    raise LookupError(f"no client in bev.{service}.v1.{service}_rpc")


def client_for(service: str, transport: Transport) -> Any:
    """An instance of that client; typed as Any because the service is chosen at run time."""
    return client_class(service)(transport)


async def discover(nc: NatsClient, timeout_s: float = 1.0) -> list[Instance]:
    infos, stats = await asyncio.gather(_gather(nc, "$SRV.INFO", timeout_s), _gather(nc, "$SRV.STATS", timeout_s))
    stats_by_id = {s["id"]: s for s in stats}
    instances: list[Instance] = []
    for info in infos:
        name: str = info.get("name", "")
        if not name.startswith("bev-"):
            continue
        meta = info.get("metadata") or {}
        endpoints = stats_by_id.get(info["id"], {}).get("endpoints", [])
        instances.append(
            Instance(
                service=name.removeprefix("bev-"),
                instance=meta.get("instance", info["id"]),
                node=meta.get("node", "?"),
                state="unknown",
                uptime_s=max(0.0, time.time() - float(meta.get("started", time.time()))),
                requests=sum(int((e.get("data") or {}).get("requests", 0)) for e in endpoints),
                errors=sum(int((e.get("data") or {}).get("errors", 0)) for e in endpoints),
                rpc_rate=sum(float((e.get("data") or {}).get("rate_1m", 0.0)) for e in endpoints),
                grpc_address=meta.get("grpc", ""),
                metrics_address=meta.get("metrics", ""),
            )
        )
    await asyncio.gather(*(_fill_health(nc, i, max(timeout_s, 1.0)) for i in instances))
    return sorted(instances, key=lambda i: (i.service, i.node, i.instance))


async def _fill_health(nc: NatsClient, instance: Instance, timeout_s: float) -> None:
    """Ask this one replica (not the queue group) for its Health."""
    client = client_for(instance.service, NatsTransport(nc, instance=instance.instance))
    try:
        health: common_pb2.HealthResponse = await client.Health(common_pb2.HealthRequest(), timeout_s=timeout_s)
    except RpcError as exc:
        instance.state, instance.error = "unreachable", exc.message
        return
    instance.state = _STATUS_NAMES.get(health.status, "unknown")
    instance.uptime_s = health.uptime_s
    instance.checks = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in health.checks]


def missing_services(instances: list[Instance], expected: Iterable[str]) -> list[str]:
    """Expected services (the manifest's, `Manifest.service_names()`) with no live instance."""
    live = {i.service for i in instances if i.state in ("serving", "degraded")}
    return [s for s in expected if s not in live]
