"""The thin entry point every service process runs (`python -m services.<name>`).

Order: settings -> logging/tracing -> Vault login -> NATS -> build the servicer -> serve it on
NATS and gRPC plus /metrics (RPC metrics, process CPU and memory, data-dir disk space, GPUs) ->
wait for SIGTERM/SIGINT -> halt background work (`Servicer.stopping`), stop taking work, finish
in-flight calls, close. A missing dependency at start ends the process with one line and exit code 1.

Every service runs on uvloop (libuv's event loop): the per-call work of the RPC layer is mostly
event-loop overhead (socket reads, callbacks, task steps), which uvloop does in C.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import uvloop
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from bev import __version__
from bev.bus import BusUnavailable, connect_nats
from bev.rpc.grpc_transport import GrpcRpcServer, TlsFiles
from bev.rpc.nats_transport import NatsRpcServer
from bev.rpc.servicer import InstanceInfo, Servicer
from bev.secrets import SecretsUnavailable, VaultSecrets
from bev.settings import BevSettings
from bev.telemetry import (
    configure_logging,
    configure_tracing,
    get_logger,
    register_process_collectors,
    start_metrics_server,
)

S = TypeVar("S", bound=BevSettings)
log = get_logger(__name__)

EXIT_CONFIG = 2
EXIT_DEPENDENCY = 1


class StartupError(Exception):
    """A dependency a service needs at start is missing; str() is the one line the operator sees."""


@dataclass
class ServiceRuntime(Generic[S]):
    """What a service's `build` gets: its settings, identity, bus connection and secrets."""

    settings: S
    info: InstanceInfo
    nc: NatsClient
    secrets: VaultSecrets


Build = Callable[[ServiceRuntime[S]], Awaitable[Servicer]]


def run_service(name: str, settings_type: type[S], build: Build[S]) -> None:
    try:
        settings = settings_type()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "__".join(str(part) for part in first["loc"]).upper()
        print(f"bev-{name}: invalid setting BEV_{where}: {first['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(name, settings.telemetry)
    configure_tracing(name, settings.telemetry)
    try:
        uvloop.run(_serve(name, settings, build))
    except (StartupError, SecretsUnavailable, BusUnavailable) as exc:
        print(f"bev-{name}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_DEPENDENCY) from None


async def _serve(name: str, settings: S, build: Build[S]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    secrets = VaultSecrets(settings.vault, name)
    await asyncio.to_thread(secrets.login)
    nats_creds = await asyncio.to_thread(secrets.read, f"nats/{name}")  # this service's own NATS user
    nc = await connect_nats(settings.nats, f"bev-{name}", nats_creds.get("user", ""), nats_creds.get("password", ""))
    info = InstanceInfo(service=name, node=settings.node, version=__version__)
    servicer = await build(ServiceRuntime(settings, info, nc, secrets))
    rpc = settings.rpc
    grpc_server = GrpcRpcServer(
        servicer,
        host=rpc.grpc_host,
        port=rpc.grpc_port,
        max_request_bytes=rpc.max_request_bytes,
        default_timeout_s=rpc.default_timeout_s,
        tls=TlsFiles(*rpc.grpc_tls) if rpc.grpc_tls else None,
    )
    try:
        grpc_port = await grpc_server.start()
    except OSError as exc:  # unreadable certificate files
        raise StartupError(f"gRPC TLS files: {exc}") from None
    register_process_collectors(settings.data_dir)  # its disk space; its GPUs, where NVML finds any
    metrics_port = start_metrics_server(settings.telemetry.metrics_host, settings.telemetry.metrics_port)
    nats_server = NatsRpcServer(
        nc,
        servicer,
        max_request_bytes=rpc.max_request_bytes,
        default_timeout_s=rpc.default_timeout_s,
        max_concurrency=rpc.max_concurrency,
        instance=info.instance,
        metadata=info.discovery_metadata(f"{rpc.grpc_host}:{grpc_port}",
                                         f"{settings.telemetry.metrics_host}:{metrics_port}"),
    )
    await servicer.start()
    await nats_server.start()
    renewal = asyncio.create_task(secrets.renew_forever(stop))
    log.info("serving", grpc_port=grpc_port, metrics_port=metrics_port, node=info.node, instance=info.instance)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await servicer.stopping()
        await nats_server.stop()
        await grpc_server.stop(grace_s=5)
        await servicer.close()
        renewal.cancel()
        await nc.drain()
        log.info("stopped")
