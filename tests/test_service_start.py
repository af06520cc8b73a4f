"""A service whose dependencies are missing says why in one line and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bev.engines import OpenBao, free_port, seed_fleet


def _run_service(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.avatar"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "BEV_TELEMETRY__LOG_JSON": "true", **env})


def test_vault_unreachable_is_one_line_and_exit_1() -> None:
    port = free_port()
    result = _run_service({"BEV_VAULT__ADDR": f"http://127.0.0.1:{port}", "BEV_VAULT__ROLE_ID": "r",
                           "BEV_VAULT__SECRET_ID": "s"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bev-avatar: Vault at http://127.0.0.1:") and "unreachable" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_line_and_exit_2() -> None:
    result = _run_service({"BEV_RPC__MAX_CONCURRENCY": "lots"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bev-avatar: invalid setting BEV_RPC__MAX_CONCURRENCY: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_nats_unreachable_is_one_line_and_exit_1(openbao_server: OpenBao) -> None:
    creds = seed_fleet(openbao_server.addr, openbao_server.root_token, ["avatar"],
                       {"nats/avatar": {"user": "bev-avatar", "password": "x"}}, {"avatar": ["nats/avatar"]})
    role_id, secret_id = creds["avatar"]
    port = free_port()
    started = time.monotonic()
    result = _run_service({
        "BEV_VAULT__ADDR": openbao_server.addr, "BEV_VAULT__ROLE_ID": role_id, "BEV_VAULT__SECRET_ID": secret_id,
        "BEV_NATS__URL": f"nats://127.0.0.1:{port}", "BEV_NATS__CONNECT_TIMEOUT_S": "2",
    })
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bev-avatar: NATS at nats://127.0.0.1:{port} is unreachable"), result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
