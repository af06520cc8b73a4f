"""Faults injected into a running fleet (`bev up`): each engine SIGKILLed in turn under load comes
back by itself and the services reconnect; during an outage callers get 503/504 with a cause, fast,
never a 500 or a hang; a service restart blocked by a frozen Vault goes through once Vault is back;
a frozen service costs callers a failover or a failure within the method's deadline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
import pytest_asyncio
import redis
from nats.aio.client import Client as NatsClient

from bev.fleet import discover
from tests.test_fleet import BEV, bearer, start_fleet

pytestmark = pytest.mark.slow
async_test = pytest.mark.asyncio(loop_scope="module")

SERVICES = ("gateway", "collectors", "swarm", "avatar")  # every engine, no model to load
ENGINE_BACK_S = 30  # the bar for an engine to be restarted and answering again


@dataclass
class Fleet:
    data_dir: Path
    process: subprocess.Popen[bytes]
    output: Path
    recovery_s: dict[str, float] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "run" / "fleet.json").read_text()))

    @property
    def gateway(self) -> str:
        return str(self.state()["gateway"])

    @property
    def auth(self) -> dict[str, str]:
        """The fleet's admin key, as the gateway wants it."""
        return bearer(str(self.state()["api_key"]))

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data_dir = tmp_path_factory.mktemp("faults")
    process, _ = start_fleet(data_dir, *(arg for name in SERVICES for arg in ("--only", name)))
    output = data_dir / "up.log"
    running = Fleet(data_dir, process, output)
    yield running
    print("engine recovery (s):", json.dumps(running.recovery_s))
    process.send_signal(signal.SIGINT)
    assert process.wait(90) == 0, output.read_text()[-3000:]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bus(fleet: Fleet) -> AsyncIterator[NatsClient]:
    creds = fleet.state()["nats"]
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"],
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    yield nc
    await nc.close()


class Load:
    """Callers hitting the gateway throughout a fault: every answer's status and time."""

    ROUTES = (("GET", "/api/v1/swarm/roles", None),
              ("POST", "/api/v1/graph/query", {"cypher": "MATCH (e:Entity) RETURN count(e) AS n"}),
              ("POST", "/api/v1/indicators/extract", {"text": "C2 at 203.0.113.9"}))

    def __init__(self, base: str, auth: dict[str, str]) -> None:
        self.base = base
        self.auth = auth
        self.statuses: Counter[int] = Counter()
        self.slowest_s = 0.0
        self.bodies: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, headers=self.auth, timeout=120, trust_env=False) as http:
            while not self._stop.is_set():
                for method, path, body in self.ROUTES:
                    began = time.monotonic()
                    response = await http.request(method, path, json=body)
                    self.slowest_s = max(self.slowest_s, time.monotonic() - began)
                    self.statuses[response.status_code] += 1
                    if response.status_code >= 500:
                        self.bodies.append(response.text)
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def _engine_pid(fleet: Fleet, name: str) -> int | None:
    pid = fleet.state()["engines"][name]["pid"]
    return int(pid) if pid else None


def _engine_answers(fleet: Fleet, name: str) -> bool:
    """One real request to the engine, as its clients make them."""
    state = fleet.state()
    port = int(state["engines"][name]["port"])
    try:
        if name == "vault":
            return httpx.get(f"{state['vault']['addr']}/v1/sys/health", timeout=1, trust_env=False).status_code == 200
        if name in ("redis", "falkordb"):
            password = (fleet.data_dir / "run" / f"{name}.password").read_text().strip()
            return bool(redis.Redis(port=port, password=password, socket_timeout=1).ping())
        if name == "postgres":
            password = (fleet.data_dir / "postgres" / "postgres.password").read_text().strip()
            with psycopg.connect(host="127.0.0.1", port=port, user="bev", password=password, dbname="postgres",
                                 connect_timeout=1):
                return True
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:  # nats: its INFO greeting
            return conn.recv(4).startswith(b"INFO")
    except (OSError, redis.RedisError, httpx.HTTPError, psycopg.Error):
        return False


async def _services_healthy(bus: NatsClient, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        instances = {i.service: i for i in await discover(bus, 0.5) if i.state == "serving"}
        if set(SERVICES) <= set(instances):
            return
        assert time.monotonic() < deadline, f"services not serving again: {sorted(set(SERVICES) - set(instances))}"
        await asyncio.sleep(0.5)


@async_test
@pytest.mark.parametrize("engine", ["postgres", "falkordb", "redis", "vault", "nats"])
async def test_a_killed_engine_comes_back_and_callers_never_see_a_500(fleet: Fleet, bus: NatsClient,
                                                                        engine: str) -> None:
    load = Load(fleet.gateway, fleet.auth)
    loader = asyncio.create_task(load.run())
    await asyncio.sleep(1)
    pid = _engine_pid(fleet, engine)
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    if engine == "nats":  # with the bus down the gateway answers 503 at once
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=fleet.gateway, headers=fleet.auth, timeout=10, trust_env=False) as http:
            began = time.monotonic()
            response = await http.get("/api/v1/swarm/roles")
        if response.status_code == 503:  # (unless NATS was back already)
            assert time.monotonic() - began < 1.0 and "NATS" in response.json()["error"]
    while True:
        new_pid = _engine_pid(fleet, engine)
        if new_pid not in (None, pid) and await asyncio.to_thread(_engine_answers, fleet, engine):
            break
        assert time.monotonic() - killed < ENGINE_BACK_S, f"{engine} not back:\n{fleet.log()[-2000:]}"
        await asyncio.sleep(0.2)
    fleet.recovery_s[engine] = round(time.monotonic() - killed, 2)
    await _services_healthy(bus, 60)
    await asyncio.sleep(2)  # load against the recovered fleet
    load.stop()
    await loader
    assert set(load.statuses) <= {200, 503, 504}, (load.statuses, load.bodies[:3])
    assert load.statuses[200] > 0
    assert load.slowest_s < 35, load.slowest_s  # GraphQuery's deadline is 30 s; nothing waits past it
    assert f"engine={engine}" in fleet.log() and "engine restarted" in fleet.log()
    if engine != "nats":  # with NATS itself down the event can only be logged
        event = await bus.jetstream().get_last_msg("BEV_EVENTS", "bev.events.fleet.engine_restarted")
        assert json.loads(event.data or b"{}")["engine"] == engine


@async_test
async def test_vault_frozen_then_a_service_crash_then_vault_back(fleet: Fleet, bus: NatsClient) -> None:
    vault_pid = _engine_pid(fleet, "vault")
    avatar_pid = int(fleet.state()["services"]["avatar"]["pid"])
    assert vault_pid is not None
    os.kill(vault_pid, signal.SIGSTOP)  # down but not dead: the supervisor cannot restart it
    try:
        os.kill(avatar_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "service restart failed; retrying" not in fleet.log():
            assert time.monotonic() < deadline, fleet.log()[-2000:]
            await asyncio.sleep(0.5)
        event = await bus.jetstream().get_last_msg("BEV_EVENTS", "bev.events.fleet.service_restart_failed")
        assert json.loads(event.data or b"{}")["service"] == "avatar"
    finally:
        os.kill(vault_pid, signal.SIGCONT)
    back = time.monotonic()
    await _services_healthy(bus, 60)
    print(f"avatar serving {time.monotonic() - back:.1f}s after Vault resumed")


@pytest.fixture
def second_swarm(fleet: Fleet) -> Iterator[subprocess.Popen[bytes]]:
    """One more swarm replica (`bev service swarm`), outside the supervisor."""
    extra = subprocess.Popen([str(BEV), "service", "swarm", "--data-dir", str(fleet.data_dir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    yield extra
    extra.send_signal(signal.SIGTERM)
    extra.wait(30)


@async_test
async def test_a_frozen_service_costs_a_failover_or_a_failure_within_its_deadline(
        fleet: Fleet, bus: NatsClient, second_swarm: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while len([i for i in await discover(bus, 0.5) if i.service == "swarm" and i.state == "serving"]) < 2:
        assert time.monotonic() < deadline, "second swarm replica did not join"
        await asyncio.sleep(0.5)
    swarm_pid = int(fleet.state()["services"]["swarm"]["pid"])
    avatar_pid = int(fleet.state()["services"]["avatar"]["pid"])
    os.kill(swarm_pid, signal.SIGSTOP)
    os.kill(avatar_pid, signal.SIGSTOP)
    try:
        async with httpx.AsyncClient(base_url=fleet.gateway, headers=fleet.auth, timeout=60, trust_env=False) as http:
            for _ in range(8):  # ListRoles: idempotent, 5 s deadline; the live replica answers
                began = time.monotonic()
                roles = await http.get("/api/v1/swarm/roles")
                assert roles.status_code == 200 and time.monotonic() - began < 5.5
            # The avatar's GetState: 5 s deadline, its only replica frozen. Half the deadline, then
            # once more with what is left; no answer at all is 504 within the deadline, not a hang.
            began = time.monotonic()
            state = await http.get("/api/v1/avatar/frozen-investigation/state")
            took = time.monotonic() - began
        assert state.status_code == 504 and "no answer" in state.json()["error"]
        assert 4.5 < took < 6.0, took
    finally:
        os.kill(swarm_pid, signal.SIGCONT)
        os.kill(avatar_pid, signal.SIGCONT)
