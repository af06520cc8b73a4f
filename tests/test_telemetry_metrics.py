"""The metrics every process exports besides its RPCs: cache hit rates, data-dir disk space, process
CPU and memory, GPUs only where NVML finds one, Vault token renewals; and the lot passes
`promtool check metrics`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from bev.engines import NatsServer, OpenBao, free_port, seed_fleet
from bev.secrets import VaultSecrets
from bev.settings import VaultSettings
from bev.telemetry import (
    DiskCollector,
    GpuCollector,
    cache_stats,
    register_gpu_collector,
    register_process_collectors,
    start_metrics_server,
)


def promtool_problems(exposition: str) -> str:
    """What `promtool check metrics` says about an exposition ("" when it passes)."""
    checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
                             timeout=30, check=False)
    problems = (checked.stdout + checked.stderr).strip()
    return problems or ("" if checked.returncode == 0 else f"promtool exited {checked.returncode}")


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_cache_exports_its_requests_and_hit_rate() -> None:
    cache = cache_stats("test_lookup")
    assert cache_stats("test_lookup") is cache  # one per name: instances of one cache add up
    assert sample("bev_cache_hit_rate", cache="test_lookup") is None  # no lookups yet: no rate, not 0
    cache.miss()
    for _ in range(3):
        cache.hit()
    assert sample("bev_cache_requests_total", cache="test_lookup", result="hit") == 3
    assert sample("bev_cache_requests_total", cache="test_lookup", result="miss") == 1
    assert sample("bev_cache_hit_rate", cache="test_lookup") == 0.75


def test_disk_space_of_the_data_dir_is_read_at_scrape_time(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    register_process_collectors(data_dir, registry)
    register_process_collectors(data_dir, registry)  # once per registry: no duplicate-registration error
    path = str(data_dir.resolve())
    free = registry.get_sample_value("bev_disk_free_bytes", {"path": path})
    total = registry.get_sample_value("bev_disk_total_bytes", {"path": path})
    usage = shutil.disk_usage(data_dir)
    assert total == usage.total and free is not None and 0 < free <= total
    data_dir.rmdir()  # a path that is gone is left out of the scrape, without an error
    assert registry.get_sample_value("bev_disk_free_bytes", {"path": path}) is None
    assert "bev_disk_free_bytes{" not in generate_latest(registry).decode()


def test_disk_collector_counts_each_path_once(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    disk = DiskCollector([tmp_path, tmp_path / "sub" / ".."])
    families = list(disk.collect())
    assert [len(family.samples) for family in families] == [1, 1]


def test_gpu_metrics_exist_only_where_nvml_finds_a_gpu() -> None:
    """This machine has no NVIDIA driver: registration says so, raises nothing, exports nothing.
    On a GPU machine, each device has its utilisation and memory."""
    registry = CollectorRegistry()
    registered = register_gpu_collector(registry)
    driver_present = Path("/dev/nvidiactl").exists()
    assert registered is driver_present
    text = generate_latest(registry).decode()
    if not registered:
        assert "bev_gpu_" not in text
        # A device NVML cannot read (here: none at all) is left out of a scrape; nothing raises.
        assert [len(family.samples) for family in GpuCollector(2).collect()] == [0, 0, 0]
        return
    labels = {"gpu": "0", "name": _gpu_name(text)}
    total = registry.get_sample_value("bev_gpu_memory_total_bytes", labels)
    used = registry.get_sample_value("bev_gpu_memory_used_bytes", labels)
    utilization = registry.get_sample_value("bev_gpu_utilization_ratio", labels)
    assert total is not None and total > 0 and used is not None and 0 <= used <= total
    assert utilization is not None and 0 <= utilization <= 1
    assert promtool_problems(text) == ""


def _gpu_name(text: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith('bev_gpu_memory_total_bytes{gpu="0"'))
    return line.split('name="', 1)[1].split('"', 1)[0]


def test_process_cpu_and_memory_are_exported() -> None:
    assert (sample("process_cpu_seconds_total") or 0) > 0
    assert (sample("process_resident_memory_bytes") or 0) > 0


def _short_lived(openbao: OpenBao, service: str) -> VaultSecrets:
    credentials = seed_fleet(openbao.addr, openbao.root_token, [service], {}, {service: ["redis"]}, token_ttl="2s")
    role_id, secret_id = credentials[service]
    return VaultSecrets(VaultSettings(addr=openbao.addr, role_id=role_id, secret_id=secret_id), service)


async def test_token_renewals_are_counted_by_outcome(openbao_server: OpenBao, tmp_path: Path) -> None:
    # Renewals that work, against the session's OpenBao.
    secrets = _short_lived(openbao_server, "renewal-test-ok")
    await asyncio.to_thread(secrets.login)
    ok_before = sample("bev_vault_token_renewals_total", service="renewal-test-ok", outcome="ok") or 0
    stop = asyncio.Event()
    renewing = asyncio.create_task(secrets.renew_forever(stop))
    await asyncio.sleep(2.5)  # 2 s TTL: renewed at 2/3 of it, then again
    stop.set()
    await asyncio.wait_for(renewing, timeout=1)
    assert (sample("bev_vault_token_renewals_total", service="renewal-test-ok", outcome="ok") or 0) >= ok_before + 1

    # Renewals that fail: a Vault of its own, stopped after the login.
    vault = OpenBao(tmp_path)
    vault.start()
    try:
        doomed = _short_lived(vault, "renewal-test-failed")
        await asyncio.to_thread(doomed.login)
    finally:
        vault.stop()
    await asyncio.wait_for(doomed.renew_forever(asyncio.Event()), timeout=5)  # returns once the token expired
    assert (sample("bev_vault_token_renewals_total", service="renewal-test-failed", outcome="failed") or 0) >= 1
    assert sample("bev_vault_token_renewals_total", service="renewal-test-failed", outcome="ok") == 0  # there from the start


def test_metrics_endpoint_passes_promtool(tmp_path: Path) -> None:
    register_process_collectors(tmp_path)
    cache_stats("test_promtool").hit()
    port = start_metrics_server("127.0.0.1", 0)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in ("bev_cache_requests_total", "bev_cache_hit_rate", "bev_disk_free_bytes", "bev_disk_total_bytes",
                   "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert f"\n{family}" in text, family
    assert promtool_problems(text) == ""


def test_a_service_process_serves_them(openbao_server: OpenBao, nats_server: NatsServer, tmp_path: Path) -> None:
    """bev.runtime's start registers them: a real service process's /metrics, as Prometheus scrapes it."""
    role_id, secret_id = seed_fleet(openbao_server.addr, openbao_server.root_token, ["avatar"],
                                    {"nats/avatar": {"user": "bev-avatar", "password": "x"}},
                                    {"avatar": ["nats/avatar"]})["avatar"]
    port = free_port()
    env = {**os.environ, "BEV_DATA_DIR": str(tmp_path), "BEV_VAULT__ADDR": openbao_server.addr,
           "BEV_VAULT__ROLE_ID": role_id, "BEV_VAULT__SECRET_ID": secret_id, "BEV_NATS__URL": nats_server.url,
           "BEV_TELEMETRY__METRICS_PORT": str(port), "BEV_RPC__GRPC_PORT": "0"}
    env.pop("BEV_VAULT__TOKEN", None)
    with (tmp_path / "avatar.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.avatar"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "avatar.log").read_text()
                assert time.monotonic() < deadline, "no /metrics within 60 s"
                time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    assert f'bev_disk_free_bytes{{path="{tmp_path.resolve()}"}}' in text
    assert "\nprocess_cpu_seconds_total " in text and "\nprocess_resident_memory_bytes " in text
    assert "bev_gpu_" not in text or Path("/dev/nvidiactl").exists()
    assert promtool_problems(text) == ""
