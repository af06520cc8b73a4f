"""The base every servicer extends: a service's handlers, written once, served on every transport."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from bev.common.v1 import common_pb2
from bev.rpc.context import CallContext
from bev.rpc.definition import ServiceDef


@dataclass(frozen=True)
class InstanceInfo:
    """Who this process is; published in $SRV metadata and Health."""

    service: str
    node: str = "local"
    version: str = "0.1.0"
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)

    def discovery_metadata(self, grpc_address: str = "", metrics_address: str = "") -> dict[str, str]:
        """What `$SRV.INFO` publishes about this instance (read back by bev.fleet.discover)."""
        return {"node": self.node, "instance": self.instance, "pid": str(self.pid), "started": f"{self.started:.3f}",
                "grpc": grpc_address, "metrics": metrics_address}


class Servicer:
    """Subclass the generated `<Service>Servicer` (bev/<svc>/v1/<svc>_rpc.py), not this class.

    Handlers are `async def Method(self, request, ctx) -> Response` for unary methods and
    async generators for server-streaming ones. End a call with an error by raising
    `RpcError(code, message)`; any other exception ends it with INTERNAL.
    """

    SERVICE: ClassVar[ServiceDef]

    def __init__(self, info: InstanceInfo) -> None:
        self.info = info

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        """Override to report dependency checks; any failing check makes Health DEGRADED."""
        return []

    async def Health(self, request: common_pb2.HealthRequest, ctx: CallContext) -> common_pb2.HealthResponse:
        checks = await self.health_checks()
        ok = all(check.ok for check in checks)
        return common_pb2.HealthResponse(
            status=common_pb2.HealthResponse.STATUS_SERVING if ok else common_pb2.HealthResponse.STATUS_DEGRADED,
            service=self.info.service,
            instance=self.info.instance,
            node=self.info.node,
            version=self.info.version,
            uptime_s=time.time() - self.info.started,
            checks=checks,
        )

    async def start(self) -> None:
        """Start background work (a web server, a consumer) once the process is connected."""

    async def stopping(self) -> None:
        """The process was told to stop: halt background work now, before in-flight calls drain.

        Draining can take seconds (a client's open stream) while the rest of the fleet is already
        going away; work that went on meanwhile would meet failures that are only the shutdown and
        could record them as real outcomes. `close()` follows once the calls have drained."""

    async def close(self) -> None:
        """Release models, pools and connections when the process stops."""
