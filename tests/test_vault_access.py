"""Zero trust in Vault, against a real OpenBao seeded as the supervisor seeds it (seed_fleet with the
manifest's grants): each service's token reads its own secrets and nothing else; a secret id logs in
once and not after its TTL; a revoked token stops working at once and the service's renewal loop
says so; a live token is renewed past its TTL.

The module runs its own OpenBao: it rewrites every service's policy and role and the secrets'
values, which the session's `openbao_server` keeps for the tests that seeded it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import hvac
import pytest
import requests
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from bev.engines import OpenBao, new_secret_id, seed_fleet
from bev.engines.vault_seed import APPROLE_MOUNT, policy_for, role_name
from bev.manifest import load_manifest
from bev.secrets import SecretsUnavailable, VaultSecrets, secret_path
from bev.settings import VaultSettings

MANIFEST = load_manifest()
SERVICES = list(MANIFEST.services)
GRANTS = {service: MANIFEST.secrets_of(service) for service in SERVICES}
# Every secret some service reads, each with a value that says whose it is.
SECRETS = {name: {"value": f"{name}-value"} for names in GRANTS.values() for name in names}


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    with OpenBao(tmp_path_factory.mktemp("openbao-access")) as server:
        seed_fleet(server.addr, server.root_token, SERVICES, SECRETS, GRANTS)
        yield server


def root(vault: OpenBao) -> Any:
    return hvac.Client(url=vault.addr, token=vault.root_token, timeout=10)


def login(vault: OpenBao, service: str, secret_id: str | None = None) -> requests.Response:
    """AppRole login over the plain HTTP API, with a fresh secret id unless one is given."""
    role_id = root(vault).auth.approle.read_role_id(role_name(service), mount_point=APPROLE_MOUNT)["data"]["role_id"]
    secret_id = secret_id or new_secret_id(vault.addr, vault.root_token, service)
    return requests.post(f"{vault.addr}/v1/auth/{APPROLE_MOUNT}/login",
                         json={"role_id": role_id, "secret_id": secret_id}, timeout=10)


def token_of(vault: OpenBao, service: str) -> str:
    response = login(vault, service)
    assert response.status_code == 200, response.text
    token: str = response.json()["auth"]["client_token"]
    return token


def get(vault: OpenBao, token: str, path: str) -> requests.Response:
    return requests.get(f"{vault.addr}/v1/{path}", headers={"X-Vault-Token": token}, timeout=10)


def session(vault: OpenBao, service: str, secret_id: str | None = None) -> VaultSecrets:
    """The service's own client (bev.secrets), as the supervisor starts it."""
    role_id = root(vault).auth.approle.read_role_id(role_name(service), mount_point=APPROLE_MOUNT)["data"]["role_id"]
    settings = VaultSettings(addr=vault.addr, role_id=role_id,
                             secret_id=secret_id or new_secret_id(vault.addr, vault.root_token, service))
    return VaultSecrets(settings, service)


def reseed(vault: OpenBao, service: str, secret_id_ttl: str = "10m", token_ttl: str = "1h") -> str:
    """The service's AppRole again, with these TTLs (the supervisor's by default); returns the
    secret id minted under them."""
    return seed_fleet(vault.addr, vault.root_token, [service], {}, {service: GRANTS[service]},
                      secret_id_ttl, token_ttl=token_ttl)[service][1]


def renewals(service: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("bev_vault_token_renewals_total", {"service": service, "outcome": outcome}) or 0.0


def test_policies_and_roles_are_those_the_manifest_derives(vault: OpenBao) -> None:
    client = root(vault)
    for service in SERVICES:
        role = role_name(service)
        assert client.sys.read_policy(role)["data"]["rules"] == policy_for(GRANTS[service]), service
        config = client.auth.approle.read_role(role, mount_point=APPROLE_MOUNT)["data"]
        assert config["token_policies"] == [role], service
        assert (config["secret_id_num_uses"], config["token_type"], config["token_ttl"]) == (1, "service", 3600)
        assert config["secret_id_ttl"] == 600
    # The secrets some service needs, and nobody else's: collectors read the graph, the gateway its pepper.
    assert {s for s in SERVICES if "falkordb" in GRANTS[s]} == {"collectors"}
    assert {s for s in SERVICES if "gateway" in GRANTS[s]} == {"gateway"}


def test_each_token_reads_its_secrets_and_is_refused_every_other(vault: OpenBao) -> None:
    for service in SERVICES:
        token = token_of(vault, service)
        policies = get(vault, token, "auth/token/lookup-self").json()["data"]["policies"]
        assert sorted(policies) == sorted(["default", role_name(service)])
        for name in SECRETS:
            answer = get(vault, token, f"secret/data/{secret_path(name)}")
            if name in GRANTS[service]:
                assert answer.status_code == 200, (service, name, answer.text)
                assert answer.json()["data"]["data"] == SECRETS[name]
            else:
                assert answer.status_code == 403, (service, name, answer.status_code)
                assert answer.json()["errors"] == ["1 error occurred:\n\t* permission denied\n\n"]


def test_a_token_can_do_nothing_but_read(vault: OpenBao) -> None:
    token = token_of(vault, "swarm")
    other = role_name("gateway")
    refused = [
        requests.post(f"{vault.addr}/v1/secret/data/{secret_path('postgres')}", json={"data": {"dsn": "x"}},
                      headers={"X-Vault-Token": token}, timeout=10),  # write its own secret
        requests.request("LIST", f"{vault.addr}/v1/secret/metadata/{secret_path('')}",
                         headers={"X-Vault-Token": token}, timeout=10),  # see which secrets exist
        requests.post(f"{vault.addr}/v1/auth/{APPROLE_MOUNT}/role/{other}/secret-id",
                      headers={"X-Vault-Token": token}, timeout=10),  # mint another service's login
        get(vault, token, f"auth/{APPROLE_MOUNT}/role/{other}/role-id"),
        get(vault, token, f"sys/policies/acl/{other}"),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert get(vault, token, f"secret/data/{secret_path('postgres')}").status_code == 200  # still reads


def test_the_service_client_is_refused_another_services_secret_in_one_line(vault: OpenBao) -> None:
    embeddings = session(vault, "embeddings")
    assert embeddings.read("postgres") == SECRETS["postgres"]
    with pytest.raises(SecretsUnavailable) as raised:
        embeddings.read("nats/swarm")
    assert str(raised.value) == (
        "Vault read of 'secret/bev/nats/swarm' for service 'embeddings' failed: permission denied")
    assert isinstance(raised.value.__cause__, hvac.exceptions.Forbidden)


def test_a_secret_id_logs_in_once(vault: OpenBao) -> None:
    secret_id = new_secret_id(vault.addr, vault.root_token, "avatar")
    assert login(vault, "avatar", secret_id).status_code == 200
    again = login(vault, "avatar", secret_id)
    assert (again.status_code, again.json()) == (400, {"errors": ["invalid role or secret ID"]})
    with pytest.raises(SecretsUnavailable) as raised:
        session(vault, "avatar", secret_id).login()
    assert str(raised.value).startswith("Vault AppRole login for service 'avatar' failed: ")
    assert str(raised.value).endswith(": invalid role or secret ID")


def test_a_secret_id_expires_after_its_ttl(vault: OpenBao) -> None:
    first = reseed(vault, "monitoring", secret_id_ttl="2s")
    try:
        second = new_secret_id(vault.addr, vault.root_token, "monitoring")
        assert login(vault, "monitoring", first).status_code == 200  # within its TTL: fine
        time.sleep(3)
        late = login(vault, "monitoring", second)  # never used, but past its 2 s
        assert (late.status_code, late.json()) == (400, {"errors": ["invalid role or secret ID"]})
    finally:
        reseed(vault, "monitoring")


async def test_a_revoked_token_loses_access_and_the_renewal_loop_says_so(vault: OpenBao) -> None:
    await asyncio.to_thread(reseed, vault, "reasoning", "10m", "3s")
    try:
        reasoning = session(vault, "reasoning")
        assert await asyncio.to_thread(reasoning.read, "nats/reasoning") == SECRETS["nats/reasoning"]
        failed_before = renewals("reasoning", "failed")
        stop = asyncio.Event()
        with capture_logs() as logs:
            renewing = asyncio.create_task(reasoning.renew_forever(stop))
            # The operator revokes it by accessor, found from what it knows: the role it was issued
            # to and its 3 s TTL (the module's other reasoning tokens last an hour).
            client = root(vault)
            tokens = [client.auth.token.lookup_accessor(a)["data"]
                      for a in client.auth.token.list_accessors()["data"]["keys"]]
            mine = [t["accessor"] for t in tokens
                    if t["meta"] == {"role_name": role_name("reasoning")} and t["creation_ttl"] == 3]
            assert len(mine) == 1, tokens
            client.auth.token.revoke_accessor(mine[0])
            with pytest.raises(SecretsUnavailable) as raised:
                await asyncio.to_thread(reasoning.read, "nats/reasoning")
            assert str(raised.value) == (
                "Vault read of 'secret/bev/nats/reasoning' for service 'reasoning' failed: permission denied")
            # Its next renewal (2 s into the 3 s lease) is refused: the loop ends, it does not retry.
            began = time.monotonic()
            await asyncio.wait_for(renewing, timeout=5)
        assert time.monotonic() - began < 3
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [e["event"] for e in errors] == ["vault token revoked or invalid; restart the service to log in again"]
        assert errors[0]["service"] == "reasoning"
        assert errors[0]["error"] == "Vault token renewal for service 'reasoning' failed: permission denied"
        assert not [e for e in logs if e["log_level"] == "warning"]  # no "retrying"
        assert renewals("reasoning", "failed") == failed_before + 1  # what VaultTokenRenewalFailures reads
    finally:
        await asyncio.to_thread(reseed, vault, "reasoning")


async def test_a_live_token_is_renewed_past_its_ttl(vault: OpenBao) -> None:
    await asyncio.to_thread(reseed, vault, "gateway", "10m", "5s")
    try:
        gateway = session(vault, "gateway")
        await asyncio.to_thread(gateway.login)
        assert gateway.ttl == 5
        renewed_before, failed_before = renewals("gateway", "ok"), renewals("gateway", "failed")
        stop = asyncio.Event()
        renewing = asyncio.create_task(gateway.renew_forever(stop))
        await asyncio.sleep(11)  # past two lifetimes of the lease: only renewals keep it valid
        assert await asyncio.to_thread(gateway.read, "gateway") == SECRETS["gateway"]
        assert renewals("gateway", "ok") - renewed_before >= 3  # about every 3.3 s (5 s TTL, 1.7 s of slack)
        assert renewals("gateway", "failed") == failed_before
        stop.set()
        await asyncio.wait_for(renewing, timeout=2)
    finally:
        await asyncio.to_thread(reseed, vault, "gateway")
