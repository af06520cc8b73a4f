"""Services get exactly their own secrets from a seeded OpenBao, and failures read as one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bev.engines import OpenBao, free_port, new_secret_id, seed_fleet
from bev.manifest import load_manifest
from bev.secrets import SecretsUnavailable, VaultSecrets
from bev.settings import VaultSettings

SECRETS = {
    "postgres": {"dsn": "postgresql://bev:pg-pw@127.0.0.1:5432/bev"},
    "redis": {"url": "redis://:redis-pw@127.0.0.1:6379/0"},
    "nats/embeddings": {"user": "bev-embeddings", "password": "nats-pw-e"},
    "falkordb": {"host": "127.0.0.1", "port": "6380", "password": "falkor-pw"},
    "nats/collectors": {"user": "bev-collectors", "password": "nats-pw-c"},
}
SERVICES = ["embeddings", "collectors"]
MANIFEST = load_manifest()


@pytest.fixture(scope="module")
def seeded(openbao_server: OpenBao) -> dict[str, tuple[str, str]]:
    access = {service: MANIFEST.secrets_of(service) for service in SERVICES}
    return seed_fleet(openbao_server.addr, openbao_server.root_token, SERVICES, SECRETS, access)


def _session(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]], service: str) -> VaultSecrets:
    """A service's VaultSecrets with a fresh single-use secret id, as the supervisor hands out."""
    role_id = seeded[service][0]
    secret_id = new_secret_id(openbao_server.addr, openbao_server.root_token, service)
    settings = VaultSettings(addr=openbao_server.addr, role_id=role_id, secret_id=secret_id)
    return VaultSecrets(settings, service)


def test_grants_come_from_the_manifest() -> None:
    assert {service: MANIFEST.secrets_of(service) for service in SERVICES} == {
        "embeddings": ["nats/embeddings", "postgres"],
        "collectors": ["nats/collectors", "postgres", "redis", "falkordb"],
    }


def test_each_service_reads_its_own_secrets(
    openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]
) -> None:
    embeddings = _session(openbao_server, seeded, "embeddings")
    embeddings.login()
    assert embeddings.read("postgres") == SECRETS["postgres"]
    assert embeddings.read("nats/embeddings") == SECRETS["nats/embeddings"]

    collectors = _session(openbao_server, seeded, "collectors")
    collectors.login()
    assert collectors.read("redis") == SECRETS["redis"]
    assert collectors.read("falkordb") == SECRETS["falkordb"]


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
        embeddings.read("redis")
    message = str(raised.value)
    assert message == "Vault read of 'secret/bev/redis' for service 'embeddings' failed: permission denied"
    with pytest.raises(SecretsUnavailable, match="permission denied"):
        embeddings.read("nats/collectors")  # another service's NATS user


def test_read_logs_in_on_first_use(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    assert _session(openbao_server, seeded, "collectors").read("nats/collectors") == SECRETS["nats/collectors"]


def test_seeding_again_is_idempotent(openbao_server: OpenBao, seeded: dict[str, tuple[str, str]]) -> None:
    access = {service: MANIFEST.secrets_of(service) for service in SERVICES}
    again = seed_fleet(openbao_server.addr, openbao_server.root_token, SERVICES, SECRETS, access)
    assert {service: role_id for service, (role_id, _) in again.items()} == {
        service: role_id for service, (role_id, _) in seeded.items()
    }
    assert again["collectors"][1] != seeded["collectors"][1]


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
    # 6 s, renewed at 2/3: 2 s of slack per renewal. With 2 s (0.67 s of slack) CI once saw a
    # renewal land too late after the JetStream test's fsync storm had the disk busy.
    secrets = _short_lived(openbao_server, "6s")
    await asyncio.to_thread(secrets.login)
    stop = asyncio.Event()
    renewing = asyncio.create_task(secrets.renew_forever(stop))
    await asyncio.sleep(8)  # past the 6s TTL: only renewals keep the token valid
    assert await asyncio.to_thread(secrets.read, "redis") == SECRETS["redis"]
    stop.set()
    await asyncio.wait_for(renewing, timeout=1)


async def test_renewal_failure_is_logged_not_raised(tmp_path: Path) -> None:
    vault = OpenBao(tmp_path)
    vault.start()
    try:
        secrets = _short_lived(vault, "2s")
        await asyncio.to_thread(secrets.login)
    finally:
        vault.stop()
    with capture_logs() as logs:
        # Returns by itself once the token has expired; it never raises.
        await asyncio.wait_for(secrets.renew_forever(asyncio.Event()), timeout=5)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert warnings and warnings[0]["event"] == "vault token renewal failed; retrying"
    assert warnings[0]["service"] == "swarm" and warnings[0]["retry_in_s"] >= 1
    assert "is unreachable (connection refused)" in warnings[0]["error"]
    assert len(errors) == 1 and errors[0]["event"] == "vault token expired; restart the service to log in again"
    assert errors[0]["service"] == "swarm"
