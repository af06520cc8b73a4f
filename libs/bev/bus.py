"""The NATS connection every process shares: fail fast at start with one line, reconnect forever after.

Also who may use which subjects: each service connects as its own NATS user (credentials from
Vault, secret `nats/<service>`) whose permissions `nats_permissions` derives from the services it
calls, as its entry in deploy/manifest.yaml declares them (`Manifest.callees`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable

import nats
from nats.aio.client import Client as NatsClient

from bev.settings import NatsSettings
from bev.telemetry import get_logger

log = get_logger(__name__)


def inbox_prefix(connection_name: str) -> str:
    """Replies to a connection arrive under its own prefix, so its user may subscribe to those alone."""
    return f"_INBOX.{connection_name}"


def events_prefix(service: str) -> str:
    """Where a service publishes its events on the BEV_EVENTS stream (`bev.events.>`)."""
    return f"bev.events.{service}"


def nats_permissions(service: str, callees: Iterable[str], *, discovery: bool = False,
                     events: Iterable[str] = (), listens: Iterable[str] = ()) -> dict[str, dict[str, list[str]]]:
    """NATS publish/subscribe allow-lists for a service's user (server config `permissions`).

    `callees`: the services it calls; `discovery`: it may also ask every instance of every service
    ($SRV.PING/INFO/STATS); `events`: further event subjects it publishes (`bev.events.<name>.>`);
    `listens`: event subjects it subscribes to. `Manifest.nats_permissions` fills them in from the
    service's entry.
    """
    me = f"bev-{service}"
    # Requests to its callees, a PING to their replicas (a retry goes to one that answers:
    # bev.rpc.nats_transport), and its own events on JetStream (`bev.events.<service>.>`).
    publish = ["_INBOX.>", *(f"bev.{callee}.v1.>" for callee in callees),
               *(f"$SRV.PING.bev-{callee}" for callee in callees), f"{events_prefix(service)}.>",
               *(f"{events_prefix(name)}.>" for name in events)]
    if discovery:
        # The fleet's watcher (monitoring): every instance's discovery, each node supervisor's
        # restart subject (self-healing), and JetStream's read-only info API (consumer lag).
        publish += ["$SRV.>", "bev.supervisor.>", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
                    "$JS.API.STREAM.INFO.>", "$JS.API.CONSUMER.LIST.>", "$JS.API.CONSUMER.INFO.>"]
    subscribe = [
        f"bev.{service}.v1.>",  # its methods, queue group and instance-addressed
        "$SRV.PING", "$SRV.INFO", "$SRV.STATS", f"$SRV.*.{me}", f"$SRV.*.{me}.>",  # micro discovery
        f"{inbox_prefix(me)}.>",  # replies to its own requests, and stream cancellations
        *(f"{events_prefix(name)}.>" for name in listens),
        *([f"{events_prefix('fleet')}.>"] if discovery else []),  # supervisors' service/engine exits
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


class BusUnavailable(Exception):
    """NATS could not be reached at start; str() is one line naming the address and the cause."""


def nats_tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """The client side of NATS TLS: the servers' CA, and this client's certificate if it has one.

    None when settings.tls_ca_file is empty (plaintext, the one-machine fleet). A file that cannot
    be read raises BusUnavailable with one line naming it.
    """
    if not settings.tls_ca_file:
        return None
    path, env = settings.tls_ca_file, "BEV_NATS__TLS_CA_FILE"
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
        if settings.tls_cert_file:
            path = f"{settings.tls_cert_file} (key {settings.tls_key_file})"
            env = "BEV_NATS__TLS_CERT_FILE and BEV_NATS__TLS_KEY_FILE"
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    except OSError as exc:  # ssl.SSLError too: a file that is there but holds no usable PEM
        raise BusUnavailable(
            f"NATS TLS file {path} is unusable ({type(exc).__name__}: {exc}); fix {env}"
        ) from exc
    return context


def nats_servers(url: str) -> list[str]:
    """The server URLs in settings.nats.url: one, or a cluster's separated by commas."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect_nats(settings: NatsSettings, name: str, user: str = "", password: str = "") -> NatsClient:
    tls = nats_tls_context(settings)
    last_error: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        # nats-py's default callback prints a traceback per attempt; one line is enough.
        last_error[:] = [exc]
        log.warning("nats error", error=f"{type(exc).__name__}: {exc}")

    connection: list[NatsClient] = []

    async def on_disconnect() -> None:
        if connection and not (connection[0].is_closed or connection[0].is_draining):
            log.warning("nats disconnected; reconnecting", url=settings.url)

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=settings.url)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                nats_servers(settings.url),
                name=name,
                tls=tls,
                user=user or settings.user or None,
                password=password or settings.password or None,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
                inbox_prefix=inbox_prefix(name),
            ),
            timeout=settings.connect_timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = last_error[0] if last_error else exc
        raise BusUnavailable(
            f"NATS at {settings.url} is unreachable after {settings.connect_timeout_s:.0f}s "
            f"({type(cause).__name__}: {cause or 'no answer'}); start it or set BEV_NATS__URL"
        ) from exc
    connection.append(nc)
    return nc
