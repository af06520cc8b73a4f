"""API keys, the audit log and per-key limits against a real PostgreSQL and Redis (bev.access,
services/gateway/limits.py), and `bev keys` against a real OpenBao holding the fleet's secrets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as RedisClient
from typer.testing import CliRunner

from bev import access
from bev.access import AuditEntry, AuditLog, InvalidKeyRequest, KeyStore
from bev.cli import app as cli
from bev.engines import OpenBao, Postgres, Redis
from bev.engines.vault_seed import seed_fleet
from bev.vocab import Tlp
from services.gateway.limits import Limits, RateLimited

PEPPER = "a-test-pepper-of-enough-length"


@pytest_asyncio.fixture(loop_scope="session")
async def pool(fresh_database: Callable[[], str]) -> AsyncIterator[AsyncConnectionPool[Any]]:
    dsn = fresh_database()
    await asyncio.to_thread(access.migrate, dsn)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def test_a_key_is_shown_once_stored_as_an_hmac_and_verifies(pool: AsyncConnectionPool[Any]) -> None:
    store = KeyStore(pool, PEPPER)
    record, whole = await store.create("laptop", ["read", "write"], "blue", max_tlp=Tlp.GREEN)
    assert whole.startswith(f"bev_{record.id}_") and len(whole) > 50
    assert record.scopes == {"read", "write"} and record.team == "blue" and record.max_tlp is Tlp.GREEN
    verified = await store.verify(whole)
    assert verified is not None and verified.id == record.id and verified.state() == "active"
    # The secret is nowhere in the table: only its HMAC under the pepper.
    async with pool.connection() as conn:
        row = await (await conn.execute("select * from access.api_keys where id = %s", (record.id,))).fetchone()
    assert row is not None and whole.split("_", 2)[2] not in json.dumps([str(v) for v in row])
    # A wrong secret, another pepper, a malformed key: no record.
    assert await store.verify(whole[:-1] + ("A" if whole[-1] != "A" else "B")) is None
    assert await KeyStore(pool, "another-pepper-of-enough-length").verify(whole) is None
    for bad in ("", "bev_", "bearer", f"bev_{record.id}", "sk-openai-key", "bev_UPPER_x"):
        assert await store.verify(bad) is None


async def test_revoked_and_expired_keys_say_so_and_bad_requests_are_refused(pool: AsyncConnectionPool[Any]) -> None:
    store = KeyStore(pool, PEPPER)
    record, whole = await store.create("short-lived", ["read"], "red-team",
                                       expires_at=datetime.now(UTC) + timedelta(seconds=1))
    await asyncio.sleep(1.1)
    expired = await store.verify(whole)
    assert expired is not None and expired.state() == "expired"
    revoked = await store.revoke(record.id)
    assert revoked is not None and revoked.state() == "revoked"
    again = await store.revoke(record.id)
    assert again is not None and again.revoked_at == revoked.revoked_at  # idempotent
    assert await store.revoke("nosuchkey") is None
    with pytest.raises(InvalidKeyRequest, match="unknown scope superuser"):
        await store.create("x", ["read", "superuser"], "blue")
    with pytest.raises(InvalidKeyRequest, match="at least one scope"):
        await store.create("x", [" "], "blue")
    with pytest.raises(InvalidKeyRequest, match="team"):
        await store.create("x", ["read"], "../etc")
    with pytest.raises(InvalidKeyRequest, match="past"):
        await store.create("x", ["read"], "blue", expires_at=datetime.now(UTC) - timedelta(days=1))


async def test_ensure_installs_an_outside_key_and_replaces_its_secret(pool: AsyncConnectionPool[Any]) -> None:
    store = KeyStore(pool, PEPPER)
    _, _, first = access.new_key("bootstrap")
    await store.ensure(first, "fleet bootstrap", ["admin"], "admin", Tlp.RED)
    assert (await store.verify(first)) is not None
    _, _, second = access.new_key("bootstrap")
    key = await store.ensure(second, "fleet bootstrap", ["admin"], "admin", Tlp.RED)
    assert key.scopes == {"admin"} and await store.verify(first) is None and await store.verify(second) is not None


async def test_keys_page_by_id_and_filter_by_team(pool: AsyncConnectionPool[Any]) -> None:
    store = KeyStore(pool, PEPPER)
    made = [(await store.create(f"k{i}", ["read"], "paging-a" if i % 2 else "paging-b"))[0].id for i in range(7)]
    seen: list[str] = []
    after = ""
    while page := await store.list(team="paging-a", after=after, limit=2):
        seen += [k.id for k in page]
        after = page[-1].id
    assert seen == sorted(k for i, k in enumerate(made) if i % 2)
    # Any position is one, even with a NUL (a hex cursor may decode to one; PostgreSQL text cannot hold it).
    assert [k.id for k in await store.list(team="paging-a", after=seen[0] + "\x00")] == seen[1:]


async def test_audit_log_lists_newest_first_with_filters(pool: AsyncConnectionPool[Any]) -> None:
    log = AuditLog(pool)
    ids = [await log.write(AuditEntry("k1" if i < 3 else "k2", "blue", "POST", "/api/v1/investigations",
                                      "/api/v1/investigations", f"inv-{i}", 202 if i != 4 else 403, "0" * 32,
                                      "127.0.0.1:5000")) for i in range(6)]
    newest = await log.list(limit=2)
    assert [e.id for e in newest] == ids[::-1][:2]
    older = await log.list(before=newest[-1].id, limit=10)
    assert [e.id for e in older] == ids[::-1][2:]
    assert [e.object_id for e in await log.list(key_id="k1")] == ["inv-2", "inv-1", "inv-0"]
    assert [e.object_id for e in await log.list(status=403)] == ["inv-4"]


async def test_a_batch_is_written_in_order_and_its_events_read_as_its_rows(pool: AsyncConnectionPool[Any]) -> None:
    log = AuditLog(pool)
    # A NUL (a path may hold one: %00), quotes and non-ASCII must not fail the batch nor shift its ids.
    paths = [f"/api/v1/x/{i}" for i in range(300)]
    paths[7], paths[8] = "/api/v1/x/a\x00b", '/api/v1/x/"q"\\ é'
    batch = [AuditEntry(f"k{i % 3}", "batch", "PUT", "/api/v1/x/{id}", path, str(i), 200 + i % 2, f"{i:032x}",
                        "127.0.0.1:5000") for i, path in enumerate(paths)]
    ids = await log.write_many(batch)
    assert len(ids) == len(batch) and ids == sorted(ids) and len(set(ids)) == len(ids)
    written = {e.id: e for e in await log.list(team="batch", limit=1000)}
    for entry, entry_id in zip(batch, ids, strict=True):
        row = written[entry_id]
        assert (row.object_id, row.trace_id, row.status, row.at) == (entry.object_id, entry.trace_id, entry.status,
                                                                      entry.at)
        assert row.path == entry.path.replace("\x00", "\ufffd")
        # The event is the entry as json.dumps writes it, with its id; the NUL reads as in the row.
        expected = json.dumps({**entry.to_json(), "id": entry_id}).replace("\\u0000", "\\ufffd").encode()
        assert entry.event_body(entry_id) == expected
        assert json.loads(entry.event_body(entry_id)) == {**row.to_json(), "id": entry_id}
    assert await log.write_many([]) == []
    # The connection went back to the pool as it came (not in autocommit).
    async with pool.connection() as conn:
        assert not conn.autocommit


async def test_the_request_bucket_allows_the_hourly_budget_then_429_with_retry_after(
        pool: AsyncConnectionPool[Any], redis_server: Redis) -> None:
    store = KeyStore(pool, PEPPER)
    key, _ = await store.create("bucket", ["read"], "blue", requests_per_hour=10)
    client = RedisClient(connection_pool=BlockingConnectionPool.from_url(redis_server.url, max_connections=8))
    try:
        limits = Limits(client, prefix="test-bucket")
        # Twenty requests at once, from as many tasks (as replicas would race): exactly ten pass.
        decisions = await asyncio.gather(*(limits.take_request(key) for _ in range(20)))
        assert sum(d.allowed for d in decisions) == 10
        refused = next(d for d in decisions if not d.allowed)
        # One request comes back every 360 s (10 per hour).
        assert 300 < refused.retry_after_s <= 360 and refused.remaining == 0
        assert refused.headers()["RateLimit-Limit"] == "10"
        for decision in (refused, next(d for d in decisions if d.allowed)):  # the guard sends these
            assert decision.raw_headers() == [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]
        # Redis lost the script (a restart): the bucket still works.
        await client.script_flush()
        assert not (await limits.take_request(key)).allowed
    finally:
        await client.aclose()


async def test_llm_tokens_per_day(pool: AsyncConnectionPool[Any], redis_server: Redis) -> None:
    store = KeyStore(pool, PEPPER)
    key, _ = await store.create("tokens", ["write"], "blue", tokens_per_day=100)
    client = RedisClient.from_url(redis_server.url)
    try:
        limits = Limits(client, prefix="test-tokens")
        await limits.check_tokens(key)
        assert await limits.spend_tokens(key, 60) == 60
        await limits.check_tokens(key)
        assert await limits.spend_tokens(key, 60) == 120
        with pytest.raises(RateLimited) as refused:
            await limits.check_tokens(key)
        assert 0 < refused.value.retry_after_s <= 86_400
        assert int(refused.value.headers["Retry-After"]) >= 1
    finally:
        await client.aclose()


def test_bev_keys_create_list_revoke_against_vault(openbao_server: OpenBao, postgres_server: Postgres,
                                                   fresh_database: Callable[[], str], tmp_path: Path) -> None:
    """`bev keys` reads the database's DSN and the pepper from Vault (here the operator's token)."""
    dsn = fresh_database()
    seed_fleet(openbao_server.addr, openbao_server.root_token, ["gateway"],
               {"postgres": {"dsn": dsn}, "gateway": {"pepper": PEPPER}}, {"gateway": ["postgres", "gateway"]})
    env = {"BEV_VAULT__ADDR": openbao_server.addr, "BEV_VAULT__TOKEN": openbao_server.root_token,
           "BEV_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "ci key", "--scopes", "read,write", "--team", "blue", "--tlp", "green",
                               "--json"], env=env)
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert created["key"].startswith(f"bev_{created['id']}_") and created["max_tlp"] == "green"
    listed = runner.invoke(cli, ["keys", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    keys = json.loads(listed.stdout)["keys"]
    assert [k["id"] for k in keys] == [created["id"]] and "key" not in keys[0]
    assert runner.invoke(cli, ["keys", "revoke", created["id"]], env=env).exit_code == 0
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select revoked_at from access.api_keys where id = %s", (created["id"],)).fetchone()
    assert row is not None and row[0] is not None
    bad = runner.invoke(cli, ["keys", "create", "x", "--scopes", "root"], env=env)
    assert bad.exit_code == 2 and "unknown scope root" in bad.output
    gone = runner.invoke(cli, ["keys", "revoke", "nosuchkey"], env=env)
    assert gone.exit_code == 1 and "no API key nosuchkey" in gone.output


async def test_replicas_lease_requests_and_never_exceed_the_budget(
        pool: AsyncConnectionPool[Any], redis_server: Redis) -> None:
    """A busy key's requests come from Redis in leases (2 at a time at 200 an hour): two replicas
    together allow at most the budget, and leave only a few requests unused in hand."""
    store = KeyStore(pool, PEPPER)
    key, _ = await store.create("leases", ["read"], "blue", requests_per_hour=200)
    client = RedisClient(connection_pool=BlockingConnectionPool.from_url(redis_server.url, max_connections=8))
    try:
        replicas = [Limits(client, prefix="test-lease"), Limits(client, prefix="test-lease")]
        decisions = []
        for wave in range(30):  # ten requests at a time, to each replica in turn
            decisions += await asyncio.gather(*(replicas[wave % 2].take_request(key) for _ in range(10)))
        allowed = sum(d.allowed for d in decisions)
        assert 190 <= allowed <= 200
        assert all(d.remaining >= 0 for d in decisions)
    finally:
        await client.aclose()
