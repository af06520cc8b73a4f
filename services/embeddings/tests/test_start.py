"""The embeddings service needs PostgreSQL at start: when it cannot reach it, it says where in one
line (no password) and exits 1."""

from __future__ import annotations

import os
import subprocess
import sys

from bev.engines import NatsServer, OpenBao, free_port, seed_fleet


def test_postgres_unreachable_is_one_line_and_exit_1(openbao_server: OpenBao, nats_server: NatsServer) -> None:
    port = free_port()
    dsn = f"postgresql://bev:s3cret-pw@127.0.0.1:{port}/bev"
    creds = seed_fleet(openbao_server.addr, openbao_server.root_token, ["embeddings"],
                       {"nats/embeddings": {"user": "", "password": ""}, "postgres": {"dsn": dsn}},
                       {"embeddings": ["nats/embeddings", "postgres"]})
    role_id, secret_id = creds["embeddings"]
    result = subprocess.run(
        [sys.executable, "-m", "services.embeddings"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "BEV_VAULT__ADDR": openbao_server.addr, "BEV_VAULT__ROLE_ID": role_id,
             "BEV_VAULT__SECRET_ID": secret_id, "BEV_NATS__URL": nats_server.url, "BEV_TELEMETRY__LOG_JSON": "true"},
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bev-embeddings: postgres at 127.0.0.1:{port}/bev: "), result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr
