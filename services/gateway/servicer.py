"""Gateway: serves the HTTP API (uvicorn, in this process) and answers Health on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from bev.gateway.v1.gateway_rpc import GatewayServicer
from bev.manifest import ManifestError, load_manifest
from bev.runtime import ServiceRuntime, StartupError
from services.gateway.api import create_app
from services.gateway.clients import ClientsMismatch
from services.gateway.http_server import GatewayServer, server_config
from services.gateway.settings import Settings


class Gateway(GatewayServicer):
    def __init__(self, runtime: ServiceRuntime[Settings], callees: Iterable[str]) -> None:
        super().__init__(runtime.info)
        config = runtime.settings.gateway
        self.app = create_app(runtime.nc, config, callees)
        self._server = GatewayServer(server_config(self.app, config))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                config = self._server.config
                raise StartupError(f"gateway could not listen on {config.host}:{config.port} (port in use?)")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


async def build(runtime: ServiceRuntime[Settings]) -> Gateway:
    try:
        callees = load_manifest().callees("gateway")
        return Gateway(runtime, callees)
    except (ManifestError, ClientsMismatch) as exc:
        raise StartupError(str(exc)) from None
