"""DemoWorld: the demo world's servers on loopback, and the collectors' settings that reach them.

* DNS (UDP, dnspython wire format) answering from the world's zone, CNAMEs followed as an
  authoritative server does; a name outside the zone gets NXDOMAIN.
* HTTP/1.1 for every web host, each on the address its name resolves to (all in the world's
  loopback block, one port for all), virtual-hosted by the Host header: a request for a name that
  is not one of the world's web hosts, or that arrives at another host's address, gets 421.
  "{port}" in served text becomes that port, so pages link to each other by name and port.
* WHOIS (RFC 3912) answering from the world's records.

Every request is recorded (protocol, name, what was asked, peer, where it arrived, answer, and
whether the name belongs to the world), so a test or an operator can see that an investigation
stayed in the world. The collectors reach it through configuration alone: `collectors_config()`
(the CollectorsConfig fields, as plain data) or `collectors_env()` (the same as BEV_COLLECTORS__*
variables, for a fleet started with `bev up`).

This package never imports another service: it is data and stdlib servers (plus dnspython).
"""

from __future__ import annotations

import errno
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from services.swarm.demo.world import WORLD_DIR, Answer, GroundTruth, Site, World, localize

ENV_PREFIX = "BEV_COLLECTORS__"
_BIND_ATTEMPTS = 20


@dataclass(frozen=True)
class Request:
    """One request the world answered."""

    protocol: Literal["dns", "http", "whois"]
    name: str  # the name asked about: DNS question, HTTP Host (without port), WHOIS query
    asked: str  # DNS: record type; HTTP: method and path (with query); WHOIS: ""
    peer: str  # the client's address
    local: str  # "address:port" the request arrived at
    answer: str  # DNS rcode, HTTP status, WHOIS "match" / "no match"
    in_world: bool  # the name is the world's (DNS and WHOIS: a zone name; HTTP: a web host)

    def __str__(self) -> str:
        scope = "" if self.in_world else "  [outside the world]"
        return f"{self.protocol:5} {self.peer} -> {self.local}  {self.name} {self.asked} -> {self.answer}{scope}"


class DemoWorld:
    """The world's servers. Use as a context manager, or start() and stop()."""

    def __init__(self, root: Path = WORLD_DIR, *, port: int = 0, dns_port: int = 0, whois_port: int = 0,
                 on_request: Callable[[Request], None] | None = None) -> None:
        self.world = World.load(root)
        self.root = root
        self._wanted_port = port
        # Fixed ports let copies of the world in several network namespaces (`bev lab`) share one
        # set of collectors' settings.
        self._wanted_dns_port, self._wanted_whois_port = dns_port, whois_port
        self._on_request = on_request
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._bodies: dict[tuple[str, str], Answer] = {}
        self.port = 0  # the web hosts' port, once started
        self.dns_port = 0
        self.whois_port = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._servers:
            return self
        try:
            self._start_http()
            dns_server = _DnsServer((self.world.dns_address, self._wanted_dns_port), self)
            self.dns_port = dns_server.server_address[1]
            whois_server = _WhoisServer((self.world.whois_address, self._wanted_whois_port), self)
            self.whois_port = whois_server.server_address[1]
            for server in (dns_server, whois_server):
                self._serve(server)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_http(self) -> None:
        addresses = sorted({self.world.site_address(name) for name in self.world.sites})
        for _ in range(_BIND_ATTEMPTS):
            servers: list[_HttpServer] = []
            port = self._wanted_port
            try:
                for address in addresses:
                    server = _HttpServer((address, port), self)
                    port = server.server_address[1]
                    servers.append(server)
            except OSError as exc:
                for opened in servers:
                    opened.server_close()
                if exc.errno == errno.EADDRINUSE and not self._wanted_port:
                    continue  # the first address's free port is taken on another: try another port
                raise OSError(exc.errno, f"demo world: cannot listen on {address}:{port} ({exc.strerror}); "
                              f"on Linux all of 127.0.0.0/8 is loopback, elsewhere add the address to lo") from None
            self.port = port
            break
        else:
            raise OSError(errno.EADDRINUSE, f"demo world: no port free on all of {', '.join(addresses)}")
        self._bodies = {
            (site.name, path): Answer(a.status, a.content_type, localize(a.body.decode(), self.port).encode())
            if a.is_text else a
            for site in self.world.sites.values() for path, a in site.routes.items()}
        for listening in servers:
            self._serve(listening)

    def _serve(self, server: socketserver.BaseServer) -> None:
        self._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                                  name=f"demo-world-{type(server).__name__}")
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- where things are ----------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        return f"{self.world.dns_address}:{self.dns_port}"

    @property
    def whois_server(self) -> str:
        return f"{self.world.whois_address}:{self.whois_port}"

    @property
    def web_hosts(self) -> frozenset[str]:
        return frozenset(self.world.sites)

    def localize(self, text: str) -> str:
        """`text` with "{port}" replaced by the web hosts' port."""
        return str(localize(text, self.port))

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def target(self) -> tuple[str, str]:
        return self.world.target[0], self.localize(self.world.target[1])

    @property
    def seeds(self) -> list[tuple[str, str]]:
        return [(kind, self.localize(value)) for kind, value in self.world.seeds]

    def served(self, url: str) -> bool:
        """True when `url` names one of the world's web hosts on the world's port (what it serves)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        return parts.scheme == "http" and (parts.hostname or "") in self.world.sites and port == self.port

    def ground_truth(self) -> GroundTruth:
        return GroundTruth.load(self.root / "ground_truth.yaml", self.port)

    # --- the request log -----------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def outside(self) -> list[Request]:
        """Requests about names that are not the world's (an investigation that left its scope)."""
        return [request for request in self.requests if not request.in_world]

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)
        if self._on_request is not None:
            self._on_request(request)

    # --- the collectors' settings --------------------------------------------------------------

    def collectors_config(self) -> dict[str, Any]:
        """The CollectorsConfig fields that point every collector at this world (and nowhere else:
        the SSRF guard lets through only the world's block, DNS and WHOIS are the world's, no Tor)."""
        if not self.port:
            raise RuntimeError("the demo world is not started")
        sources = localize(dict(self.world.sources), self.port)
        return {
            "fetch": {"allow_ranges": [str(self.world.block)], "nameservers": [self.nameserver],
                      "per_domain_rate_per_s": 100.0, "tor_socks_url": ""},
            "dns": {"nameservers": [self.nameserver], "timeout_s": 2.0},
            "whois": {"server": self.whois_server, "timeout_s": 2.0},
            "bitcoin": {"esplora_url": sources["esplora_url"], "max_depth": 2, "max_fanout": 10,
                        "rate_limit_per_s": 100.0},
            "ethereum": {"rpc_url": sources["ethereum_rpc_url"], "rate_limit_per_s": 100.0},
            "social": {"mastodon_base_url": sources["mastodon_base_url"], "rate_limit_per_s": 100.0},
            "malware": {"rules_dirs": [str(self.root / sources["yara_rules"])]},
            "feeds": [{"tlp": "clear", **feed} for feed in sources.get("feeds", [])],
            "taxii": [{"tlp": "clear", **source} for source in sources.get("taxii", [])],
        }

    def collectors_env(self, prefix: str = ENV_PREFIX) -> dict[str, str]:
        """collectors_config() as environment variables (nested with "__", lists as JSON), as
        pydantic-settings reads them for the collectors service (BEV_COLLECTORS__FETCH__NAMESERVERS...)."""
        return dict(_flatten(self.collectors_config(), prefix))

    # --- answers -----------------------------------------------------------------------------------

    def http_answer(self, method: str, host_header: str, target: str, body: bytes, local: str) -> tuple[str, Answer]:
        """The answer to one HTTP request, and the host name it was for."""
        name = _host_name(host_header)
        site: Site | None = self.world.sites.get(name)
        if site is None:
            return name, Answer.text(f"{name or '(no Host)'} is not a web host of this world", 421)
        if local != self.world.site_address(name):
            return name, Answer.text(f"{name} is served at {self.world.site_address(name)}, not {local}", 421)
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
        if method in ("GET", "HEAD") and (name, path) in self._bodies and path != "/robots.txt":
            return name, self._bodies[(name, path)]
        answer = site.answer("GET" if method == "HEAD" else method, path, query, body, f"http://{name}:{self.port}")
        if answer.is_text and answer.status < 300:
            answer = Answer(answer.status, answer.content_type, localize(answer.body.decode(), self.port).encode())
        return name, answer

    def dns_answer(self, wire: bytes) -> tuple[bytes, str, str, str]:
        """The response to one DNS query: wire bytes, the name, the type and the rcode."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire(), "", "", "FORMERR"
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        zone = self.world.zone
        if name not in self.world.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire(), name, kind, "NXDOMAIN"
        current = name
        for _ in range(8):  # follow CNAMEs inside the zone, answering with the whole chain
            values = zone.get((current, kind))
            if values:
                response.answer.append(dns.rrset.from_text_list(current + ".", 300, "IN", kind, list(values)))
                break
            alias = zone.get((current, "CNAME"))
            if not alias:
                break
            response.answer.append(dns.rrset.from_text_list(current + ".", 300, "IN", "CNAME", list(alias)))
            current = alias[0].rstrip(".")
            if current not in self.world.names:
                break
        return response.to_wire(), name, kind, "NOERROR"


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    for key, item in value.items():
        name = f"{prefix}{key}".upper()
        if isinstance(item, dict):
            yield from _flatten(item, name + "__")
        elif isinstance(item, (list, bool)):
            yield name, json.dumps(item)
        else:
            yield name, str(item)


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host.rstrip(".")


# --- the servers -----------------------------------------------------------------------------------

class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], world: DemoWorld) -> None:
        self.world = world
        super().__init__(address, _HttpHandler)


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BEV-demo-world/1"
    timeout = 30  # an idle keep-alive connection is closed after this long
    server: _HttpServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        local_address, local_port = self.connection.getsockname()[:2]
        world = self.server.world
        name, answer = world.http_answer(self.command, self.headers.get("host", ""), self.path, body, local_address)
        world._record(Request("http", name, f"{self.command} {self.path}", self.client_address[0],
                              f"{local_address}:{local_port}", str(answer.status), name in world.world.sites))
        self.send_response(answer.status)
        self.send_header("content-type", answer.content_type)
        self.send_header("content-length", str(len(answer.body)))
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = _answer
    do_HEAD = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return  # every request is in the world's request log


class _DnsServer(socketserver.UDPServer):
    def __init__(self, address: tuple[str, int], world: DemoWorld) -> None:
        self.world = world
        super().__init__(address, _DnsHandler)


class _DnsHandler(socketserver.BaseRequestHandler):
    server: _DnsServer

    def handle(self) -> None:
        data, sock = self.request
        world = self.server.world
        local = f"{world.world.dns_address}:{world.dns_port}"
        try:
            wire, name, kind, rcode = world.dns_answer(data)
        except dns.exception.DNSException:
            world._record(Request("dns", "", "(malformed)", self.client_address[0], local, "dropped", False))
            return
        world._record(Request("dns", name, kind, self.client_address[0], local, rcode, name in world.world.names))
        sock.sendto(wire, self.client_address)


class _WhoisServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], world: DemoWorld) -> None:
        self.world = world
        super().__init__(address, _WhoisHandler)


class _WhoisHandler(socketserver.StreamRequestHandler):
    server: _WhoisServer
    timeout = 10

    def handle(self) -> None:
        world = self.server.world
        try:
            query = self.rfile.readline(1024).decode("utf-8", "replace").strip().lower()
        except OSError:  # a timeout too
            return
        record = world.world.whois.get(query.rstrip("."))
        world._record(Request("whois", query, "", self.client_address[0], world.whois_server,
                              "match" if record else "no match", query.rstrip(".") in world.world.names))
        answer = record if record is not None else f'No match for "{query.upper()}".\r\n'
        self.wfile.write(answer.replace("\r\n", "\n").replace("\n", "\r\n").encode())
