"""An engine killed with SIGKILL is noticed, reaped and started again on the same data: PostgreSQL
past its stale postmaster.pid, OpenBao with its secrets and the tokens services hold intact."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg

from bev.engines import OpenBao, Postgres, Redis, new_secret_id, seed_fleet
from bev.secrets import VaultSecrets
from bev.settings import VaultSettings


def _kill(pid: int | None) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def _wait_exit(engine: Postgres | Redis | OpenBao, within_s: float = 10) -> int:
    deadline = time.monotonic() + within_s
    while (code := engine.exit_code()) is None:
        assert time.monotonic() < deadline, f"{engine.name} did not exit"
        time.sleep(0.05)
    return code


def test_exit_code_reaps_and_a_killed_postgres_starts_again(tmp_path: Path) -> None:
    with Postgres(tmp_path / "pg", fsync=False) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("create table kept (v int)")
            conn.execute("insert into kept values (7)")
        assert pg.exit_code() is None  # running
        _kill(pg.pid)
        assert _wait_exit(pg) == -signal.SIGKILL
        assert (pg.pgdata / "postmaster.pid").exists()  # left behind by the killed postmaster
        pg.start(60)
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("select v from kept").fetchone() == (7,)


def test_a_postmaster_pid_reused_by_another_process_is_not_a_lock(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "pg", fsync=False)
    pg.start(60)
    pg.stop()
    # PostgreSQL itself would refuse: the pid in the file is alive (it is this test's own process).
    (pg.pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pg.pgdata}\n")
    with pg:
        assert pg.healthy()


def test_openbao_restart_keeps_secrets_roles_and_tokens(tmp_path: Path) -> None:
    with OpenBao(tmp_path / "bao") as bao:
        creds = seed_fleet(bao.addr, bao.root_token, ["embeddings"], {"postgres": {"dsn": "postgresql://x"}},
                           {"embeddings": ["postgres"]}, token_ttl="30s")
        role_id, secret_id = creds["embeddings"]
        secrets = VaultSecrets(VaultSettings(addr=bao.addr, role_id=role_id, secret_id=secret_id), "embeddings")
        secrets.login()
        _kill(bao.pid)
        _wait_exit(bao)
        bao.start(60)
        assert bao.healthy()
        assert secrets.renew() == 30  # the token issued before the restart is still valid
        assert secrets.read("postgres") == {"dsn": "postgresql://x"}
        assert new_secret_id(bao.addr, bao.root_token, "embeddings")  # the AppRole survived too
    assert oct((tmp_path / "bao" / "init.json").stat().st_mode & 0o777) == "0o600"


def test_engine_logs_are_private(tmp_path: Path) -> None:
    with Redis(tmp_path / "redis") as server:
        assert server.log_path.stat().st_mode & 0o777 == 0o600
        assert server.data_dir.stat().st_mode & 0o777 == 0o700
