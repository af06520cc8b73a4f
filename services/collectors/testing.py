"""Local stand-ins for the outside world collectors talk to, all bound to 127.0.0.1.

* `dns_fixture`: a UDP DNS server (dnspython wire format) answering from a zone dict tests extend.
* `http_fixture`: an HTTP/1.1 server replaying recorded responses per path, and remembering which
  peer address each request came from (the SOCKS test checks that the proxy connected, not us).
* `whois_fixture`: an RFC 3912 responder (one query line in, the recorded answer out, close).
* `socks_proxy`: Debian's microsocks with a username and password, binding its outgoing
  connections to 127.0.0.2, so the origin can tell a proxied connection from a direct one.

Servers run in daemon threads; each is session-scoped and shared, so tests use their own paths
and names.
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from bev.engines import FalkorDB, OpenBao, Postgres, free_port, new_secret_id, seed_fleet
from services.collectors.observations import migrate
from services.collectors.settings import CollectorsConfig, FetchConfig

__all__ = ["dns_fixture", "http_fixture", "socks_proxy", "whois_fixture"]


# --- DNS -----------------------------------------------------------------------------------------

@dataclass
class DnsFixture:
    host: str
    port: int
    # (name, type) -> record texts, e.g. ("example.test.", "A"): ["203.0.113.7"]
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    queries: list[tuple[str, str]] = field(default_factory=list)

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def add(self, name: str, record_type: str, *values: str) -> None:
        key = (name.rstrip(".").lower() + ".", record_type.upper())
        self.records.setdefault(key, []).extend(values)


def _serve_dns(fixture: DnsFixture, sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(4096)
        except OSError:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        fixture.queries.append((name, kind))
        values = fixture.records.get((name, kind))
        if values:
            response.answer.append(dns.rrset.from_text_list(name, 300, "IN", kind, values))
        elif not any(key[0] == name for key in fixture.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), peer)


@pytest.fixture(scope="session")
def dns_fixture() -> Iterator[DnsFixture]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    fixture = DnsFixture("127.0.0.1", sock.getsockname()[1])
    thread = threading.Thread(target=_serve_dns, args=(fixture, sock), daemon=True, name="dns-fixture")
    thread.start()
    yield fixture
    sock.close()


# --- HTTP ----------------------------------------------------------------------------------------

@dataclass
class Recorded:
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class HttpFixture:
    host: str
    port: int
    # path (with query) -> response, or a function of the request body (JSON-RPC answers by method).
    # Every origin of this server disallows /private/ in robots.txt.
    routes: dict[str, Recorded | Callable[[bytes], Recorded]] = field(default_factory=lambda: {
        "/robots.txt": Recorded(200, "text/plain", b"User-agent: *\nDisallow: /private/\n")})
    requests: list[tuple[str, str, tuple[str, int]]] = field(default_factory=list)  # method, path, peer

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes | str, content_type: str = "text/html; charset=utf-8", status: int = 200,
              headers: dict[str, str] | None = None, delay_s: float = 0.0) -> str:
        self.routes[path] = Recorded(status, content_type, body.encode() if isinstance(body, str) else body,
                                     headers or {}, delay_s)
        return self.url(path)

    def peers(self, path: str) -> list[str]:
        return [peer[0] for _, p, peer in self.requests if p == path]


def _handler(fixture: HttpFixture) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            fixture.requests.append((self.command, self.path, self.client_address))
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            route = fixture.routes.get(self.path)
            recorded = route(body) if callable(route) else route
            if recorded is None:
                recorded = Recorded(404, "text/plain", b"not found")
            if recorded.delay_s:
                time.sleep(recorded.delay_s)
            self.send_response(recorded.status)
            self.send_header("content-type", recorded.content_type)
            self.send_header("content-length", str(len(recorded.body)))
            for key, value in recorded.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(recorded.body)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            return  # requests are recorded in fixture.requests; stderr stays quiet

    return Handler


@pytest.fixture(scope="session")
def http_fixture() -> Iterator[HttpFixture]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fixture = HttpFixture("127.0.0.1", server.server_address[1])
    server.RequestHandlerClass = _handler(fixture)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="http-fixture")
    thread.start()
    yield fixture
    server.shutdown()
    server.server_close()


# --- WHOIS ---------------------------------------------------------------------------------------

@dataclass
class WhoisFixture:
    host: str
    port: int
    answers: dict[str, str] = field(default_factory=dict)  # query (lowercase) -> recorded answer
    queries: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


@pytest.fixture(scope="session")
def whois_fixture() -> Iterator[WhoisFixture]:
    fixture = WhoisFixture("127.0.0.1", 0)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            query = self.rfile.readline(1024).decode("utf-8", "replace").strip().lower()
            fixture.queries.append(query)
            answer = fixture.answers.get(query, f"No match for \"{query.upper()}\".\r\n")
            self.wfile.write(answer.encode())

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fixture.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="whois-fixture")
    thread.start()
    yield fixture
    server.shutdown()
    server.server_close()


# --- SOCKS5 --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SocksProxy:
    host: str
    port: int
    user: str
    password: str
    outgoing_address: str  # the address the proxy's own connections come from

    @property
    def url(self) -> str:
        return f"socks5://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def socks_proxy() -> Iterator[SocksProxy]:
    binary = shutil.which("microsocks")
    if binary is None:
        pytest.skip("microsocks is not installed (scripts/setup.sh installs the Debian package)")
    port = free_port()
    # The credentials the collectors' fetcher sends for investigation "inv-a" (see fetch.Fetcher):
    # any other investigation's credentials are refused, which shows they differ per investigation.
    proxy = SocksProxy("127.0.0.1", port, "bev-inv-a", "isolate", "127.0.0.2")
    process = subprocess.Popen(
        [binary, "-i", proxy.host, "-p", str(port), "-u", proxy.user, "-P", proxy.password,
         "-b", proxy.outgoing_address],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((proxy.host, port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"microsocks did not listen on {proxy.host}:{port}") from None
            time.sleep(0.05)
    yield proxy
    process.terminate()
    process.wait(5)


def local_collectors_config(dns: DnsFixture, http: HttpFixture, whois: WhoisFixture, *, tor_socks_url: str = "",
                            **more: object) -> CollectorsConfig:
    """The collectors' settings with every external base URL, resolver and server pointing at these
    local stand-ins (`more`: further top-level settings, e.g. the graph's name)."""
    return CollectorsConfig.model_validate({
        "fetch": FetchConfig(allow_ranges=["127.0.0.0/8"], nameservers=[dns.nameserver],
                             per_domain_rate_per_s=1000, tor_socks_url=tor_socks_url),
        "dns": {"nameservers": [dns.nameserver], "timeout_s": 2},
        "whois": {"server": whois.server, "timeout_s": 2},
        "bitcoin": {"esplora_url": http.url("/esplora/api"), "max_depth": 2, "max_fanout": 5,
                    "rate_limit_per_s": 1000},
        "ethereum": {"rpc_url": http.url("/eth-rpc"), "rate_limit_per_s": 1000},
        **more,
    })


REPO = Path(__file__).resolve().parents[2]


@dataclass
class CeleryProcesses:
    """Starts the collectors' Celery processes (`python -m services.collectors.worker` or `.beat`) as
    the supervisor does: each logs in to Vault with the collectors' AppRole and a fresh secret id."""

    vault: OpenBao
    secrets: dict[str, dict[str, str]]  # what Vault holds, for a Celery app in the test's own process
    env: dict[str, str]
    data_dir: Path

    def start(self, module: str, log: str, **env: str) -> subprocess.Popen[bytes]:
        secret_id = new_secret_id(self.vault.addr, self.vault.root_token, "collectors")
        with (self.data_dir / log).open("wb") as out:
            return subprocess.Popen([sys.executable, "-m", module], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    env={**self.env, "BEV_VAULT__SECRET_ID": secret_id, **env},
                                    start_new_session=True)


def celery_processes(vault: OpenBao, redis_url: str, postgres: Postgres, falkordb: FalkorDB, data_dir: Path,
                     **env: str) -> CeleryProcesses:
    """Vault seeded with the collectors' secrets (Redis at `redis_url`: a database of the test's own
    keeps its queue apart), the observations schema migrated, and the processes' environment: fetches
    allowed to loopback, no Tor, plain-text logs, plus `env`."""
    secrets = {
        "redis": {"url": redis_url},
        "postgres": {"dsn": postgres.dsn},
        "falkordb": {"host": falkordb.host, "port": str(falkordb.port), "password": falkordb.password},
    }
    role_id, _ = seed_fleet(vault.addr, vault.root_token, ["collectors"], secrets,
                            {"collectors": sorted(secrets)})["collectors"]
    migrate(postgres.dsn)
    base = {key: value for key, value in os.environ.items() if key != "BEV_VAULT__TOKEN"}  # the AppRole only
    return CeleryProcesses(vault, secrets, {
        **base, "BEV_DATA_DIR": str(data_dir), "BEV_VAULT__ADDR": vault.addr, "BEV_VAULT__ROLE_ID": role_id,
        "BEV_COLLECTORS__FETCH__ALLOW_RANGES": '["127.0.0.0/8"]', "BEV_COLLECTORS__FETCH__TOR_SOCKS_URL": "",
        "BEV_TELEMETRY__LOG_JSON": "false", **env,
    }, data_dir)
