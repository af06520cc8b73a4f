"""One node's share of a multi-node fleet: what `bev up --node N --cluster FILE` needs beyond the manifest.

The manifest says what runs where; this file says how the nodes reach and trust each other: every
node's address, the NATS users' passwords (each NATS server of the cluster authorises every user),
the cluster routes' password, this node's TLS certificate and the CA behind every node's, and where
Vault answers. The operator writes it (mode 0600: it holds credentials); `bev lab up` writes one per
namespace. A node without Vault mints its services' secret ids with the token in BEV_VAULT__TOKEN,
a node token whose policy covers only those services' AppRoles (bev.engines.vault_seed.node_policy).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

NATS_CLUSTER_PORT = 6222  # routes between the NATS servers, as in production's compose files


class ClusterError(Exception):
    """The cluster file is missing or wrong; str() is one line for the operator."""


class NodeTls(BaseModel):
    """PEM files: the CA every node's certificate chains to, and this node's certificate and key.
    The one certificate serves NATS's client port and routes, and is the client certificate of the
    node's own processes (its key usage allows both)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class ClusterSpec(BaseModel):
    node: str
    addresses: dict[str, str]  # every node's address as the other nodes dial it
    vault_addr: str
    nats_operator_password: str  # the user `bev` (supervisors and operators): not limited
    nats_route_password: str
    nats_service_passwords: dict[str, str]  # service -> its NATS user's (bev-<service>) password
    tls: NodeTls
    nats_cluster_port: int = NATS_CLUSTER_PORT

    @property
    def address(self) -> str:
        return self.addresses[self.node]

    @classmethod
    def load(cls, path: Path) -> ClusterSpec:
        try:
            spec = cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ClusterError(f"no cluster file at {path}") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise ClusterError(f"cluster file {path} is not valid: {first}") from None
        if spec.node not in spec.addresses:
            raise ClusterError(f"cluster file {path}: node {spec.node!r} has no address")
        missing = [str(p) for p in (spec.tls.ca_file, spec.tls.cert_file, spec.tls.key_file) if not p.is_file()]
        if missing:
            raise ClusterError(f"cluster file {path}: TLS file(s) missing: {', '.join(missing)}")
        return spec

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(self.model_dump_json(indent=2))
