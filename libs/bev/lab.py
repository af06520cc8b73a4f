"""The three-node fleet on one machine (`bev lab up`): each manifest node a Linux network namespace.

Each node (THANOS, STARLORD, ORACLE1) gets a namespace with its own loopback and one veth link to a
bridge on a private range; the host's end of the bridge lets the operator (and tests) reach every
node's address. Each namespace runs `bev up --node <name> --cluster <its file>`, so exactly the
engines and services the manifest places there run in it: NATS on all three as one cluster (routes
and clients over TLS with certificates from a CA minted here, JetStream R3, fsync always), Vault,
PostgreSQL, Redis and the graph on THANOS. Processes on one node reach another node's services only
through NATS; the stores on THANOS are dialled at its address, as production dials them over the
tailnet. Cutting a node's link (`cut`) or killing every process in its namespace (`kill`) is how the
tests take a node away. Needs root (ip netns) and Linux.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bev.cluster import ClusterSpec, NodeTls
from bev.engines.vault_seed import node_token
from bev.manifest import Manifest

LAB_SUBNET = "10.213.0.0/24"
LAB_PREFIX = "bevlab"
UP_TIMEOUT_S = 420.0  # three fleets starting on two shared cores
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LabError(Exception):
    """The lab could not be set up; str() is one line for the operator."""


def _ip(*args: str, netns: str = "") -> None:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")


@dataclass
class LabNetwork:
    """The namespaces, veth pairs and bridge. Interface names stay within Linux's 15 characters."""

    nodes: list[str]
    prefix: str = LAB_PREFIX
    subnet: str = LAB_SUBNET

    def __post_init__(self) -> None:
        hosts = list(ipaddress.ip_network(self.subnet).hosts())
        if len(hosts) < len(self.nodes) + 1:
            raise LabError(f"subnet {self.subnet} is too small for {len(self.nodes)} nodes")
        self._hosts = hosts

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"[:15]

    @property
    def host_address(self) -> str:
        """The bridge's own address: how this machine (outside every namespace) reaches the nodes."""
        return str(self._hosts[-1])

    def address(self, node: str) -> str:
        return str(self._hosts[self.nodes.index(node)])

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def link(self, node: str) -> str:
        """The host's end of the node's veth pair (its end in the namespace is eth0)."""
        return f"{self.prefix}{self.nodes.index(node)}"[:15]

    def create(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise LabError("the lab needs root and iproute2 (`ip netns`) to create network namespaces")
        self.destroy()  # leftovers of a lab that was not taken down
        prefix_len = ipaddress.ip_network(self.subnet).prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/{prefix_len}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            ns, link = self.netns(node), self.link(node)
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}n")
            _ip("link", "set", f"{link}n", "netns", ns)
            _ip("link", "set", f"{link}n", "name", "eth0", netns=ns)
            _ip("addr", "add", f"{self.address(node)}/{prefix_len}", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            _ip("link", "set", link, "master", self.bridge)
            _ip("link", "set", link, "up")

    def destroy(self) -> None:
        """Remove what exists of the lab (idempotent): killing what still runs in each namespace first."""
        for node in self.nodes:
            ns = self.netns(node)
            if Path(f"/run/netns/{ns}").exists():
                self.kill(node)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", self.link(node)], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def pids(self, node: str) -> list[int]:
        result = subprocess.run(["ip", "netns", "pids", self.netns(node)], capture_output=True, text=True, check=False)
        return [int(p) for p in result.stdout.split()]

    def kill(self, node: str) -> int:
        """SIGKILL every process in the node's namespace, as a power cut would; how many there were."""
        killed = 0
        for _ in range(20):  # a supervisor may spawn a child between the listing and the kill
            pids = self.pids(node)
            if not pids:
                return killed
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.1)
        return killed

    def cut(self, node: str) -> None:
        """The node's link down: it and the other nodes no longer reach each other."""
        _ip("link", "set", self.link(node), "down")

    def restore(self, node: str) -> None:
        _ip("link", "set", self.link(node), "up")

    def argv(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(node), *argv]


@dataclass
class Lab:
    """Three `bev up --node` supervisors, one per namespace, from the same manifest."""

    manifest: Manifest
    root: Path  # per-node data dirs, logs, certificates and cluster files
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every node's fleet
    prefix: str = LAB_PREFIX
    subnet: str = LAB_SUBNET
    network: LabNetwork = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _tokens: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root = self.root.absolute()
        self.network = LabNetwork(list(self.manifest.nodes), self.prefix, self.subnet)
        vault_nodes = self.manifest.engines["vault"].nodes
        if len(vault_nodes) != 1:
            raise LabError(f"the lab needs Vault on exactly one node; the manifest places it on {vault_nodes}")
        self.vault_node = vault_nodes[0]

    @property
    def nodes(self) -> list[str]:
        return self.network.nodes

    def address(self, node: str) -> str:
        return self.network.address(node)

    def data_dir(self, node: str) -> Path:
        return self.root / node

    def log_path(self, node: str) -> Path:
        return self.root / f"{node}.log"

    def fleet(self, node: str) -> dict[str, object]:
        """The node's run/fleet.json (NATS credentials and TLS files, the API key on the gateway's node)."""
        data: dict[str, object] = json.loads((self.data_dir(node) / "run" / "fleet.json").read_text())
        return data

    @property
    def vault_addr(self) -> str:
        return f"http://{self.address(self.vault_node)}:{self.manifest.engines['vault'].port}"

    # --- set-up ---------------------------------------------------------------------------------

    def write_cluster_files(self) -> None:
        """A CA minted for this lab, one certificate per node (server and client use, named by its
        address), and each node's cluster file with the shared NATS passwords."""
        import trustme  # a dev dependency: the lab is for development and tests

        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = trustme.CA(organization_name="BEV lab")
        ca.cert_pem.write_to_path(str(pki / "ca.pem"))
        operator, route = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        passwords = {name: secrets.token_urlsafe(24) for name in self.manifest.service_names()}
        addresses = {node: self.address(node) for node in self.nodes}
        for node in self.nodes:
            cert = ca.issue_cert(self.address(node), "127.0.0.1", "localhost", node)
            cert_file, key_file = pki / f"{node}.pem", pki / f"{node}.key"
            cert.cert_chain_pems[0].write_to_path(str(cert_file))
            key_file.touch(mode=0o600)
            cert.private_key_pem.write_to_path(str(key_file))
            ClusterSpec(node=node, addresses=addresses, vault_addr=self.vault_addr, nats_operator_password=operator,
                        nats_route_password=route, nats_service_passwords=passwords,
                        tls=NodeTls(ca_file=pki / "ca.pem", cert_file=cert_file, key_file=key_file),
                        ).save(self.cluster_file(node))

    def cluster_file(self, node: str) -> Path:
        return self.root / "cluster" / f"{node}.json"

    def start_node(self, node: str) -> None:
        """`bev up --node <node>` in the node's namespace (its Vault token in the environment)."""
        bev = Path(sys.executable).parent / "bev"
        argv = self.network.argv(node, [str(bev), "up", "--node", node, "--cluster", str(self.cluster_file(node)),
                                        "--data-dir", str(self.data_dir(node)), "--health-timeout", "300"])
        env = {**os.environ, **self.env, "BEV_DATA_DIR": str(self.data_dir(node))}
        env.pop("BEV_VAULT__TOKEN", None)
        if node in self._tokens:
            env["BEV_VAULT__TOKEN"] = self._tokens[node]
        log = self.log_path(node)
        with log.open("ab") as out:
            out.write(f"\n--- bev up --node {node} ({time.strftime('%H:%M:%S')})\n".encode())
            out.flush()
            self.processes[node] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_up(self, node: str, timeout_s: float = UP_TIMEOUT_S) -> None:
        """Until the node's supervisor prints that its share is healthy (its last start)."""
        process, log = self.processes[node], self.log_path(node)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace").rpartition(f"--- bev up --node {node}")[2]
            if "fleet up in" in text:
                return
            if process.poll() is not None:
                raise LabError(f"node {node}: bev up exited with {process.returncode}: {_last_line(text)} (log {log})")
            time.sleep(0.5)
        raise LabError(f"node {node} was not up within {timeout_s:.0f}s (log {log})")

    def _wait_vault(self, timeout_s: float) -> str:
        """The Vault node's OpenBao initialised and unsealed: its root token (the operator's)."""
        init = self.data_dir(self.vault_node) / "openbao" / "init.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes[self.vault_node]
            if process.poll() is not None:
                raise LabError(f"node {self.vault_node}: bev up exited with {process.returncode} "
                               f"(log {self.log_path(self.vault_node)})")
            if init.exists():
                try:
                    with _NO_PROXY.open(f"{self.vault_addr}/v1/sys/health", timeout=2) as answer:
                        if answer.status == 200:
                            token: str = json.loads(init.read_text())["root_token"]
                            return token
                except (urllib.error.URLError, OSError):
                    pass  # not listening yet: poll again
            time.sleep(0.5)
        raise LabError(f"Vault on {self.vault_node} did not come up within {timeout_s:.0f}s")

    def up(self, timeout_s: float = UP_TIMEOUT_S) -> None:
        self.prepare()
        self.start(timeout_s)

    def prepare(self) -> None:
        """Namespaces, links and certificates; nothing runs yet (start what each node needs first,
        e.g. a copy of the demo world, with network.argv)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.network.create()
        self.write_cluster_files()

    def start(self, timeout_s: float = UP_TIMEOUT_S) -> None:
        """The Vault node's fleet first (the others need its node tokens), then the others."""
        self.start_node(self.vault_node)
        root_token = self._wait_vault(timeout_s)
        for node in self.nodes:
            if node != self.vault_node:
                names = [s.name for s in self.manifest.services_on(node)]
                self._tokens[node] = node_token(self.vault_addr, root_token, node, names)
                self.start_node(node)
        for node in self.nodes:
            self.wait_up(node, timeout_s)

    def stop_node(self, node: str, grace_s: float = 60.0) -> None:
        """A clean stop of the node's supervisor (SIGINT, as Ctrl-C), then anything left is killed."""
        process = self.processes.pop(node, None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.network.kill(node)

    def kill_node(self, node: str) -> int:
        """Every process in the node's namespace SIGKILLed: the node is gone."""
        killed = self.network.kill(node)
        process = self.processes.pop(node, None)
        if process is not None:
            process.wait()
        return killed

    def down(self) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node)
        self.network.destroy()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"
