"""Seed a Vault (the embedded OpenBao) with the fleet's secrets, policies and AppRoles.

Run by the local supervisor with the root token after OpenBao starts. Every step is idempotent,
so seeding an already seeded Vault just rewrites the same state. Each service gets a policy
that reads only the secrets it is listed for and an AppRole whose secret ids are single-use:
a leaked secret id that was already used is worthless.
"""

from __future__ import annotations

from typing import Any

import hvac

from bev.secrets import secret_path, vault_errors

APPROLE_MOUNT = "approle"


def role_name(service: str) -> str:
    """AppRole (and policy) name for a service."""
    return f"bev-{service}"


def policy_for(secret_names: list[str], mount: str = "secret") -> str:
    """HCL policy granting read on exactly these KV v2 secrets."""
    blocks = [
        f'path "{mount}/data/{secret_path(name)}" {{\n  capabilities = ["read"]\n}}\n'
        for name in sorted(set(secret_names))
    ]
    # An empty policy is valid HCL but rejected by the API; a comment keeps it valid and explicit.
    return "\n".join(blocks) or "# no secrets granted\n"


def _client(addr: str, root_token: str) -> Any:
    return hvac.Client(url=addr, token=root_token, timeout=10)


def seed_fleet(
    addr: str,
    root_token: str,
    services: list[str],
    secrets: dict[str, dict[str, str]],
    access: dict[str, list[str]],
    secret_id_ttl: str = "10m",
    *,
    token_ttl: str = "1h",
    mount: str = "secret",
    issue: list[str] | None = None,
) -> dict[str, tuple[str, str]]:
    """Write secrets, one policy and one AppRole per service; return {service: (role_id, secret_id)}.

    `access` maps a service to the secret names it may read (`Manifest.secrets_of` for
    the fleet); a service missing from it may log in but read nothing. Tokens last `token_ttl`
    and are renewable; each secret id is single-use and expires after `secret_id_ttl`. Secret ids
    are issued only for the services in `issue` (default: all): on a multi-node fleet the Vault node
    seeds every service's AppRole, and each node mints ids for its own services when it starts them.
    """
    unknown = sorted(set(access) - set(services))
    if unknown:
        raise ValueError(f"access lists services that are not seeded: {', '.join(unknown)}")
    client = _client(addr, root_token)
    with vault_errors(addr, "Vault seeding: enabling AppRole and KV failed"):
        if f"{APPROLE_MOUNT}/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method("approle", path=APPROLE_MOUNT)
        if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    for name, data in secrets.items():
        with vault_errors(addr, f"Vault seeding: writing secret '{mount}/{secret_path(name)}' failed"):
            client.secrets.kv.v2.create_or_update_secret(
                path=secret_path(name), secret=data, mount_point=mount
            )
    credentials: dict[str, tuple[str, str]] = {}
    for service in services:
        role = role_name(service)
        with vault_errors(addr, f"Vault seeding: creating AppRole for service '{service}' failed"):
            client.sys.create_or_update_policy(name=role, policy=policy_for(access.get(service, []), mount))
            client.auth.approle.create_or_update_approle(
                role_name=role,
                token_policies=[role],
                token_ttl=token_ttl,
                token_type="service",  # batch tokens cannot be renewed
                secret_id_num_uses=1,
                secret_id_ttl=secret_id_ttl,
                mount_point=APPROLE_MOUNT,
            )
            role_id = client.auth.approle.read_role_id(role_name=role, mount_point=APPROLE_MOUNT)["data"][
                "role_id"
            ]
        if issue is None or service in issue:
            credentials[service] = (str(role_id), new_secret_id(addr, root_token, service))
    return credentials


def new_secret_id(addr: str, root_token: str, service: str) -> str:
    """A fresh single-use secret id for a service (secret ids cannot be reused on restart)."""
    client = _client(addr, root_token)
    with vault_errors(addr, f"Vault: issuing a secret id for service '{service}' failed"):
        response = client.auth.approle.generate_secret_id(
            role_name=role_name(service), mount_point=APPROLE_MOUNT
        )
    return str(response["data"]["secret_id"])


def read_role_id(addr: str, token: str, service: str) -> str:
    """A service's AppRole role id (with a node token: only for that node's services)."""
    client = _client(addr, token)
    with vault_errors(addr, f"Vault: reading the role id of service '{service}' failed"):
        response = client.auth.approle.read_role_id(role_name=role_name(service), mount_point=APPROLE_MOUNT)
    return str(response["data"]["role_id"])


def node_policy(services: list[str]) -> str:
    """HCL policy of a node's supervisor: read the role ids of, and issue secret ids for, exactly the
    services placed on that node. Nothing else: no secret, no other service's AppRole."""
    return "\n".join(
        f'path "auth/{APPROLE_MOUNT}/role/{role_name(s)}/role-id" {{\n  capabilities = ["read"]\n}}\n'
        f'path "auth/{APPROLE_MOUNT}/role/{role_name(s)}/secret-id" {{\n  capabilities = ["update"]\n}}\n'
        for s in sorted(set(services))
    ) or "# no services on this node\n"


def node_token(addr: str, root_token: str, node: str, services: list[str], ttl: str = "24h") -> str:
    """A token for one node's supervisor under node_policy(services) (the operator hands it over;
    `bev lab up` does it for the lab's namespaces). Revoking it stops that node from starting services."""
    client = _client(addr, root_token)
    policy = f"bev-node-{node}"
    with vault_errors(addr, f"Vault: creating the token of node '{node}' failed"):
        client.sys.create_or_update_policy(name=policy, policy=node_policy(services))
        response = client.auth.token.create(policies=[policy], ttl=ttl, renewable=True,
                                            display_name=policy, no_parent=True)
    return str(response["auth"]["client_token"])
