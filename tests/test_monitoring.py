"""Monitoring on a running fleet (`bev up`, which starts Prometheus and Alertmanager beside it):
every process is a scrape target and up; every /metrics passes `promtool check metrics`; a frozen
service (SIGSTOP) becomes exactly one incident, is restarted through its supervisor and the
incident resolves; a killed PostgreSQL is one incident rooted at `postgres`, not one per
dependant; incidents reach JetStream, Alertmanager and the gateway; the operations assistant
answers "why is reasoning slow?" after a staged slowdown, naming reasoning with a figure its
queries returned."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.monitoring.v1 import monitoring_pb2
from bev.monitoring.v1.monitoring_rpc import MonitoringClient
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import RpcError
from tests.test_fleet import BEV, bearer, start_fleet

pytestmark = pytest.mark.slow
async_test = pytest.mark.asyncio(loop_scope="module")

SERVICES = ("gateway", "reasoning", "embeddings", "collectors", "swarm", "avatar", "monitoring")
# Fast enough for a test; `make run` scrapes and evaluates every 5 s and watches every 5 s.
FAST = {"BEV_PROMETHEUS__SCRAPE_INTERVAL_S": "1", "BEV_PROMETHEUS__EVALUATION_INTERVAL_S": "1",
        "BEV_MONITORING__INTERVAL_S": "1", "BEV_MONITORING__RESOLVE_AFTER_S": "6",
        "BEV_MONITORING__ALERTMANAGER_EVERY_S": "5", "BEV_MONITORING__SETTLE_S": "1"}
DETECT_WITHIN_S = 20.0  # frozen -> incident published (2 failed scrapes + settle + a cycle, with slack)
RESOLVE_WITHIN_S = 90.0  # restarted -> serving again -> incident resolved


@dataclass
class Fleet:
    data_dir: Path
    process: subprocess.Popen[bytes]

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "run" / "fleet.json").read_text()))

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.state()['engines']['prometheus']['port']}"

    @property
    def alertmanager(self) -> str:
        return f"http://127.0.0.1:{self.state()['engines']['alertmanager']['port']}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data_dir = tmp_path_factory.mktemp("monitoring")
    process, _ = start_fleet(data_dir, *(arg for name in SERVICES for arg in ("--only", name)), env=FAST)
    yield Fleet(data_dir, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(90) == 0, (data_dir / "up.log").read_text()[-3000:]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bus(fleet: Fleet) -> AsyncIterator[NatsClient]:
    creds = fleet.state()["nats"]
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"],
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    yield nc
    await nc.close()


def _targets(fleet: Fleet) -> list[dict[str, Any]]:
    body = httpx.get(f"{fleet.prometheus}/api/v1/targets", timeout=5).json()
    return list(body["data"]["activeTargets"])


def _all_up(fleet: Fleet, within_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        targets = _targets(fleet)
        if targets and all(t["health"] == "up" for t in targets):
            return targets
        if time.monotonic() > deadline:
            down = [(t["labels"].get("process", t["labels"]["job"]), t["health"], t.get("lastError")) for t in targets if t["health"] != "up"]
            pytest.fail(f"targets not up within {within_s:.0f}s: {down}")
        time.sleep(0.5)


def test_prometheus_scrapes_every_process_and_each_is_up(fleet: Fleet) -> None:
    targets = _all_up(fleet, 60)
    # Every service and the collectors' Celery worker and beat, with their process; the engines by job.
    processes = {t["labels"]["process"] for t in targets if "process" in t["labels"]}
    assert processes == {*SERVICES, "collectors-worker", "collectors-beat"}
    assert {t["labels"]["job"] for t in targets} == {*SERVICES, "prometheus", "alertmanager"}
    assert all(t["labels"]["node"] == "local" for t in targets)


def test_every_metrics_endpoint_passes_promtool(fleet: Fleet) -> None:
    for target in _all_up(fleet, 60):
        url = target["scrapeUrl"]
        text = httpx.get(url, timeout=5).text
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=30)
        problems = (checked.stdout + checked.stderr).strip()
        if target["labels"]["job"] in ("prometheus", "alertmanager"):
            continue  # not ours to lint; scraped to watch them
        assert checked.returncode == 0 and not problems, f"{target['labels']['process']} {url}:\n{problems}"


async def _incidents(bus: NatsClient, status: str = "") -> monitoring_pb2.ListIncidentsResponse:
    client = MonitoringClient.over_nats(bus, timeout_s=5)
    return await client.ListIncidents(monitoring_pb2.ListIncidentsRequest(status=status, limit=100))


async def _wait_for(predicate: Any, within_s: float, what: str, step_s: float = 0.5) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        found = await predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {within_s:.0f}s")
        await asyncio.sleep(step_s)


async def _events(bus: NatsClient, incident_id: str) -> list[dict[str, Any]]:
    """Every event JetStream holds for one incident, in order."""
    js = bus.jetstream()
    sub = await js.subscribe(f"bev.events.alert.incident.{incident_id}", ordered_consumer=True)
    events: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=1.0)
            events.append(json.loads(msg.data))
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return events


@async_test
async def test_a_frozen_service_is_one_incident_restarted_and_resolved(fleet: Fleet, bus: NatsClient) -> None:
    _all_up(fleet, 60)
    before = {i.id for i in (await _incidents(bus)).incidents}
    pid = fleet.state()["services"]["avatar"]["pid"]
    frozen_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)

    async def opened() -> list[monitoring_pb2.Incident]:
        return [i for i in (await _incidents(bus)).incidents if i.id not in before and i.root == "avatar"]

    incident = (await _wait_for(opened, DETECT_WITHIN_S, "an incident for the frozen avatar"))[0]
    detected_s = time.monotonic() - frozen_at
    assert incident.node == "local" and incident.severity == "critical"
    assert any(a.name == "InstanceDown" and a.service == "avatar" for a in incident.alerts)

    async def in_alertmanager() -> bool:
        async with httpx.AsyncClient(timeout=5) as http:
            alerts = (await http.get(f"{fleet.alertmanager}/api/v2/alerts")).json()
        return any(a["labels"].get("alertname") == "BevIncident" and a["labels"].get("incident") == incident.id
                   and a["labels"].get("root") == "avatar" for a in alerts)

    await _wait_for(in_alertmanager, 10, "the open incident in Alertmanager", step_s=0.2)

    async def restarted() -> bool:
        return bool(fleet.state()["services"]["avatar"]["pid"] != pid)

    await _wait_for(restarted, 30, "the supervisor restarting the avatar")
    healed_s = time.monotonic() - frozen_at
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    async def resolved() -> monitoring_pb2.Incident | None:
        for each in (await _incidents(bus)).incidents:
            if each.id == incident.id and each.status == "resolved":
                return each
        return None

    done = await _wait_for(resolved, RESOLVE_WITHIN_S, "the incident resolving")
    resolved_s = time.monotonic() - frozen_at
    restarts = [a for a in done.actions if a.kind == "restart"]
    assert [(a.target, a.node, a.outcome) for a in restarts] == [("avatar", "local", "done")], done.actions
    assert "InstanceDown" in restarts[0].reason
    # Exactly one incident for the one fault: nothing else opened meanwhile.
    new = [i for i in (await _incidents(bus)).incidents if i.id not in before]
    assert [i.id for i in new] == [incident.id], [(i.root, i.summary) for i in new]
    kinds = [e["kind"] for e in await _events(bus, incident.id)]
    assert kinds[0] == "incident_opened" and kinds[-1] == "incident_resolved", kinds
    print(f"frozen avatar: incident in {detected_s:.1f}s, restarted by {healed_s:.1f}s, "
          f"resolved by {resolved_s:.1f}s")


@async_test
async def test_incidents_are_listed_by_the_gateway(fleet: Fleet, bus: NatsClient) -> None:
    listed = (await _incidents(bus)).incidents
    assert listed, "the frozen-service test left an incident"
    gateway = fleet.state()["gateway"]
    auth = bearer(fleet.state()["api_key"])
    async with httpx.AsyncClient(timeout=10) as http:
        body = (await http.get(f"{gateway}/api/v1/alerts", headers=auth)).json()
        assert [i["id"] for i in body["incidents"]] == [i.id for i in listed]
        assert (await http.get(f"{gateway}/api/v1/alerts?status=bogus", headers=auth)).status_code == 422



@async_test
async def test_a_killed_postgres_is_one_incident_not_one_per_dependant(fleet: Fleet, bus: NatsClient) -> None:
    _all_up(fleet, 60)
    before = {i.id for i in (await _incidents(bus)).incidents}
    os.kill(fleet.state()["engines"]["postgres"]["pid"], signal.SIGKILL)

    async def opened() -> list[monitoring_pb2.Incident]:
        return [i for i in (await _incidents(bus)).incidents if i.id not in before]

    incident = (await _wait_for(opened, DETECT_WITHIN_S, "an incident for the killed PostgreSQL"))[0]
    assert incident.root == "postgres", incident

    async def resolved() -> bool:
        new = [i for i in (await _incidents(bus)).incidents if i.id not in before]
        return bool(new) and all(i.status == "resolved" for i in new)

    await _wait_for(resolved, RESOLVE_WITHIN_S, "the PostgreSQL incident resolving")
    new = [i for i in (await _incidents(bus)).incidents if i.id not in before and not i.summary.startswith("merged")]
    assert [i.root for i in new] == ["postgres"], [(i.root, i.summary) for i in new]
    sources = {a.source for a in new[0].alerts}
    assert "supervisor" in sources, new[0].alerts  # the engine exit, and the dependants' failing checks with it
    assert not [a for a in new[0].actions if a.target == "postgres"]  # engines restart by themselves


def _llama_server_pid(fleet: Fleet) -> int:
    reasoning = psutil.Process(fleet.state()["services"]["reasoning"]["pid"])
    for child in reasoning.children(recursive=True):
        if "llama" in " ".join(child.cmdline()):
            return int(child.pid)
    pytest.fail("reasoning runs no embedded llama.cpp server")


@async_test
async def test_the_assistant_names_the_slow_service_with_a_figure_it_measured(fleet: Fleet, bus: NatsClient) -> None:
    reasoning = ReasoningClient.over_nats(bus, timeout_s=60)
    llama = _llama_server_pid(fleet)

    async def generate() -> None:
        try:
            await reasoning.Generate(reasoning_pb2.GenerateRequest(prompt="Name one OSINT source.", max_tokens=8))
        except RpcError:
            pass  # a request that timed out during the freeze still counts in the latency histogram

    # The staged slowdown: the model freezes for 4 s while requests queue behind it.
    await asyncio.gather(*(generate() for _ in range(2)))
    os.kill(llama, signal.SIGSTOP)
    calls = [asyncio.create_task(generate()) for _ in range(4)]
    await asyncio.sleep(4)
    os.kill(llama, signal.SIGCONT)
    await asyncio.gather(*calls)
    await asyncio.sleep(3)  # two scrapes after the slow calls ended

    asked = await asyncio.create_subprocess_exec(
        str(BEV), "ops", "ask", "why is reasoning slow?", "--json", "--data-dir", str(fleet.data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(asked.communicate(), 120)
    assert asked.returncode == 0, stderr.decode()
    answer = json.loads(stdout)
    assert answer["subject"] == "reasoning"
    assert "reasoning" in answer["answer"]
    figures = {f["id"]: f for f in answer["figures"]}
    quoted = [f for fid, f in figures.items() if fid in answer["answer"]]
    assert quoted, answer["answer"]
    # Each quoted figure is what its query returns when run again now (within the drift of a few seconds).
    prometheus = fleet.prometheus
    queries = {q["name"]: q["promql"] for q in answer["queries"]}
    reasoning_figures = [f for f in quoted if "reasoning" in json.dumps(f.get("labels", {}))]
    assert reasoning_figures, quoted
    figure = reasoning_figures[0]
    async with httpx.AsyncClient(timeout=10) as http:
        rerun = (await http.get(f"{prometheus}/api/v1/query", params={"query": queries[figure["query"]]})).json()
    values = [float(r["value"][1]) for r in rerun["data"]["result"] if r["metric"] == figure.get("labels", {})]
    assert values and abs(values[0] - figure["value"]) <= max(0.5 * abs(figure["value"]), 1e-6), (figure, values)
    print("ops answer:", answer["answer"])


def test_every_dashboard_query_parses_and_returns_series(fleet: Fleet) -> None:
    """Each Grafana panel's query, evaluated by the fleet's Prometheus (same rules, same labels as
    ORACLE1): it parses, and returns series unless it counts something that has not happened here
    (an investigation, an error, a GPU: queries_that_may_be_empty says which and why)."""
    from bev.compose.dashboards import panel_queries, queries_that_may_be_empty

    may_be_empty = queries_that_may_be_empty()
    empty: list[tuple[str, str, str]] = []
    for uid, title, expr in panel_queries():
        body = httpx.get(f"{fleet.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (uid, title, expr, body)
        if not body["data"]["result"] and (uid, title, expr) not in may_be_empty:
            empty.append((uid, title, expr))
    assert not empty, "panels showing a metric that does not exist:\n" + "\n".join(map(str, empty))
