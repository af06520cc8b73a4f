"""Services get exactly their own secrets from a seeded OpenBao, and failures read as one line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bev.engines import OpenBao, free_port, new_secret_id, seed_fleet
from bev.secrets import SERVICE_SECRETS, SecretsUnavailable, VaultSecrets
from bev.settings import VaultSettings

SECRETS = {
    "postgres": {"dsn": "postgresql://bev:pg-pw@127.0.0.1:5432/bev"},
    "redis": {"url": "redis://:redis-pw@127.0.0.1:6379/0"},
    "nats/embeddings": {"user": "bev-embeddings", "password": "nats-pw-e"},
    "nats/gateway": {"user": "bev-gateway", "password": "nats-pw-g"},
    "jwt": {"signing_key": "jwt-key"},
}
SERVICES = ["embeddings", "gateway"]


@pytest.fixture(scope="module")
def seeded(openbao_server: OpenBao) -> dict[str, tuple[str, str]]:
    access = {service: SERVICE_SECRETS[service] for service in SERVICES}
    return seed_fleet(openbao_server.addr, openbao_server.root_token, SERVICES, SECRETS, access)


def _session(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]], service: str) -> VaultSecrets:
    """A service's VaultSecrets with a fresh single-use secret id, as the supervisor hands out."""
    role_id = seeded[service][0]
    secret_id = new_secret_id(openbao_server.addr, openbao_server.root_token, service)
    settings = VaultSettings(addr=openbao_server.addr, role_id=role_id, secret_id=secret_id)
    return VaultSecrets(settings, service)


def test_service_secrets_table() -> None:
    assert set(SERVICE_SECRETS) == {
        "gateway",
        "reasoning",
        "embeddings",
        "swarm",
        "collectors",
        "avatar",
        "monitoring",
    }
    assert all(f"nats/{service}" in names for service, names in SERVICE_SECRETS.items())  # its own NATS user
    assert set(SERVICE_SECRETS["collectors"]) == {"nats/collectors", "postgres", "redis", "falkordb"}


def test_each_service_reads_its_own_secrets(
    openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]
) -> None:
    embeddings = _session(openbao_server, seeded, "embeddings")
    embeddings.login()
    assert embeddings.read("postgres") == SECRETS["postgres"]
    assert embeddings.read("nats/embeddings") == SECRETS["nats/embeddings"]

    gateway = _session(openbao_server, seeded, "gateway")
    gateway.login()
    assert gateway.read("jwt") == SECRETS["jwt"]
    assert gateway.read("redis") == SECRETS["redis"]


def test_seeded_credentials_log_in_once(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    role_id, secret_id = seeded["embeddings"]
    settings = VaultSettings(addr=openbao_server.addr, role_id=role_id, secret_id=secret_id)
    VaultSecrets(settings, "embeddings").login()

    with pytest.raises(SecretsUnavailable) as raised:
        VaultSecrets(settings, "embeddings").login()
    message = str(raised.value)
    assert message.startswith("Vault AppRole login for service 'embeddings' failed: ")
    assert "invalid" in message and "secret" in message.lower()
    assert "\n" not in message


def test_reading_a_secret_not_granted_fails(
    openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]
) -> None:
    embeddings = _session(openbao_server, seeded, "embeddings")
    embeddings.login()
    with pytest.raises(SecretsUnavailable) as raised:
        embeddings.read("jwt")
    message = str(raised.value)
    assert message == "Vault read of 'secret/bev/jwt' for service 'embeddings' failed: permission denied"
    with pytest.raises(SecretsUnavailable, match="permission denied"):
        embeddings.read("nats/gateway")  # another service's NATS user


def test_read_logs_in_on_first_use(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    assert _session(openbao_server, seeded, "gateway").read("nats/gateway") == SECRETS["nats/gateway"]


def test_seeding_again_is_idempotent(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    access = {service: SERVICE_SECRETS[service] for service in SERVICES}
    again = seed_fleet(openbao_server.addr, openbao_server.root_token, SERVICES, SECRETS, access)
    assert {service: role_id for service, (role_id, _) in again.items()} == {
        service: role_id for service, (role_id, _) in seeded.items()
    }
    assert again["gateway"][1] != seeded["gateway"][1]


def test_access_for_an_unseeded_service_is_refused(openbao_server: OpenBao) -> None:
    with pytest.raises(ValueError, match="swarm"):
        seed_fleet(openbao_server.addr, openbao_server.root_token, ["gateway"], {}, {"swarm": ["redis"]})


def test_unreachable_vault_is_one_line_naming_the_address() -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    secrets = VaultSecrets(VaultSettings(addr=addr, role_id="r", secret_id="s", timeout_s=2), "embeddings")
    with pytest.raises(SecretsUnavailable) as raised:
        secrets.login()
    assert str(raised.value) == (
        f"Vault at {addr} is unreachable (connection refused); start it or set BEV_VAULT__ADDR"
    )


def test_missing_credentials_say_which_settings_to_set() -> None:
    with pytest.raises(SecretsUnavailable, match="BEV_VAULT__ROLE_ID and BEV_VAULT__SECRET_ID"):
        VaultSecrets(VaultSettings(), "avatar").login()


def test_operator_token_login(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    secrets = VaultSecrets(
        VaultSettings(addr=openbao_server.addr, token=openbao_server.root_token), "operator"
    )
    assert secrets.read("redis") == SECRETS["redis"]
    bad = VaultSecrets(VaultSettings(addr=openbao_server.addr, token="not-a-token"), "operator")
    with pytest.raises(SecretsUnavailable) as raised:
        bad.login()
    assert str(raised.value) == "Vault token for service 'operator' was rejected: permission denied"


def _short_lived(openbao_server: OpenBao, ttl: str) -> VaultSecrets:
    """The swarm service, seeded with a token TTL of `ttl`."""
    credentials = seed_fleet(
        openbao_server.addr, openbao_server.root_token, ["swarm"], {}, {"swarm": ["redis"]}, token_ttl=ttl
    )
    role_id, secret_id = credentials["swarm"]
    return VaultSecrets(
        VaultSettings(addr=openbao_server.addr, role_id=role_id, secret_id=secret_id), "swarm"
    )


def test_renew_once(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    secrets = _short_lived(openbao_server, "30s")
    secrets.login()
    assert secrets.ttl == 30
    assert secrets.renew() == 30
    assert secrets.read("redis") == SECRETS["redis"]


async def test_renew_forever_outlives_the_ttl(
    openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]
) -> None:
    secrets = _short_lived(openbao_server, "2s")
    await asyncio.to_thread(secrets.login)
    stop = asyncio.Event()
    renewing = asyncio.create_task(secrets.renew_forever(stop))
    await asyncio.sleep(3)  # past the 2s TTL: only renewals keep the token valid
    assert await asyncio.to_thread(secrets.read, "redis") == SECRETS["redis"]
    stop.set()
    await asyncio.wait_for(renewing, timeout=1)


async def test_renewal_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vault = OpenBao(tmp_path)
    vault.start()
    try:
        secrets = _short_lived(vault, "2s")
        await asyncio.to_thread(secrets.login)
    finally:
        vault.stop()
    with caplog.at_level(logging.WARNING, logger="bev.secrets"):
        # Returns by itself once the token has expired; it never raises.
        await asyncio.wait_for(secrets.renew_forever(asyncio.Event()), timeout=5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert warnings and "is unreachable (connection refused)" in warnings[0]
    assert len(errors) == 1 and "expired; restart it to log in again" in errors[0]
