"""Investigations end to end, on the real fleet (`bev up`, SmolLM2 on llama.cpp, MiniLM, PostgreSQL,
FalkorDB, NATS, OpenBao) pointed at the demo world by configuration alone.

Each coordination mode investigates the world's target and must complete with entity recall >= 0.9
and relation recall >= 0.8 against the ground truth, a report that validates against its schema,
every citation resolving (GET /api/v1/evidence/{id}) to evidence that contains what it supports, a
STIX export that stix2-validator accepts, and no request outside the scope in the world's own log.
Faults ride along: the autonomous run has its swarm replica SIGKILLed mid-investigation, the hybrid
run has the whole fleet stopped and started mid-investigation; both must still complete, with no
completed tool call made twice and no evidence stored twice. Cancel and budget exhaustion end with a
partial, cited report.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import DeliverPolicy
from stix2validator import ValidationOptions, validate_string

from services.swarm import report as report_schema
from services.swarm.demo.investigate import recall_of, scope_of
from services.swarm.demo.server import DemoWorld
from services.swarm.events import problems as event_problems
from tests.test_fleet import BEV, bearer, start_fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # an investigation takes 1-3 min on 2 loaded cores
FINISHED = {"completed", "failed", "cancelled", "budget_exhausted"}


@dataclass
class DemoFleet:
    world: DemoWorld
    data_dir: Path
    process: subprocess.Popen[bytes]
    state: dict[str, Any]

    @property
    def gateway(self) -> str:
        return str(self.state["gateway"])

    @property
    def auth(self) -> dict[str, str]:
        """The fleet's admin key (the same after a restart: it lives in the data dir)."""
        return bearer(str(self.state["api_key"]))

    def restart(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(90)
        self.process, self.state = start_fleet(self.data_dir, env=self.world.collectors_env())


@contextmanager
def demo_fleet(data_dir: Path) -> Iterator[DemoFleet]:
    """The demo world served, and `bev up` on `data_dir` pointed at it; stopped afterwards."""
    with DemoWorld() as world:
        process, state = start_fleet(data_dir, env=world.collectors_env())
        fleet = DemoFleet(world, data_dir, process, state)
        yield fleet
        if fleet.process.poll() is None:
            fleet.process.send_signal(signal.SIGINT)
            fleet.process.wait(90)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoFleet]:
    with demo_fleet(tmp_path_factory.mktemp("demo-fleet")) as fleet:
        yield fleet


def request_for(world: DemoWorld, mode: str, **budget: Any) -> dict[str, Any]:
    return {"target": world.target[1], "mode": mode, "scope": {"allow": scope_of(world)},
            "seeds": [value for kind, value in world.seeds if kind == "url"], "budget": {"max_depth": 3, **budget}}


def start(demo: DemoFleet, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{demo.gateway}/api/v1/investigations", headers=demo.auth, json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/api/v1/investigations/{answer.json()['id']}"
    return dict(answer.json())


def events(demo: DemoFleet, investigation_id: str, after: int = 0, timeout_s: float = 900) -> list[dict[str, Any]]:
    """Server-sent events of the investigation from after `after` until `done`, as the browser sees them."""
    seen: list[dict[str, Any]] = []
    headers = {**demo.auth, **({"Last-Event-ID": str(after)} if after else {})}
    with httpx.stream("GET", f"{demo.gateway}/api/v1/investigations/{investigation_id}/events", headers=headers,
                      timeout=httpx.Timeout(timeout_s, connect=10)) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        for line in stream.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if "data" in current:
                    event = json.loads(current["data"])
                    assert event["kind"] == current["event"] and str(event["id"]) == current["id"]
                    seen.append(event)
                    if event["kind"] == "done":
                        return seen
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return seen


def wait_for(demo: DemoFleet, investigation_id: str, condition: Any, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{demo.gateway}/api/v1/investigations/{investigation_id}", headers=demo.auth,
                               timeout=10)
            if answer.status_code == 200 and condition(answer.json()):
                return dict(answer.json())
        except httpx.TransportError:
            pass  # the fleet is restarting
        time.sleep(0.5)
    pytest.fail(f"investigation {investigation_id}: condition not met within {timeout_s} s")


def check_citations(demo: DemoFleet, report: dict[str, Any]) -> int:
    """Every cited evidence id resolves, and the evidence contains the value or quote it supports."""
    cache: dict[str, str] = {}

    def content(evidence_id: str) -> str:
        if evidence_id not in cache:
            answer = httpx.get(f"{demo.gateway}/api/v1/evidence/{evidence_id}", headers=demo.auth, timeout=10)
            assert answer.status_code == 200, (evidence_id, answer.text)
            cache[evidence_id] = answer.json()["content"].lower()
        return cache[evidence_id]

    checked = 0
    for entity in report["entities"]:
        assert entity["evidence"]
        assert all(entity["value"].lower() in content(e) for e in entity["evidence"]), entity
        checked += len(entity["evidence"])
    for relation in report["relationships"]:
        assert any(relation["source"].lower() in content(e) and relation["target"].lower() in content(e)
                   for e in relation["evidence"]), relation
        checked += len(relation["evidence"])
    for hypothesis in report["hypotheses"]:
        assert hypothesis["quotes"]
        for quote in hypothesis["quotes"]:
            assert " ".join(quote["text"].lower().split()) in " ".join(content(quote["evidence"]).split()), quote
            assert quote["evidence"] in hypothesis["supporting"]
        checked += len(hypothesis["quotes"])
    assert report["citation_integrity"] == 1.0
    return checked


def check_finished(demo: DemoFleet, investigation: dict[str, Any], seen: list[dict[str, Any]]) -> dict[str, Any]:
    assert investigation["status"] == "completed", investigation.get("error")
    report = investigation["report"]
    report_schema.validate(report)
    recall = recall_of(report, demo.world)
    print(f"{investigation['mode']}: recall {recall.entities:.2f}/{recall.relations:.2f}, "
          f"{investigation['usage']}, {len(seen)} events")
    assert recall.entities >= 0.9, sorted(recall.missing_entities)
    assert recall.relations >= 0.8, sorted(recall.missing_relations)
    assert check_citations(demo, report) > 50
    # The planted injection was read as data: flagged, and nothing outside the scope was requested.
    assert any(w["kind"] == "prompt_injection" for w in report["warnings"])
    assert demo.world.outside() == [], [str(r) for r in demo.world.outside()]
    stix = httpx.get(f"{demo.gateway}/api/v1/investigations/{investigation['id']}/report.stix", headers=demo.auth,
                     timeout=30)
    assert stix.status_code == 200 and stix.headers["content-type"].startswith("application/stix+json")
    result = validate_string(stix.text, ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors][:5]
    assert any(o["type"] == "report" for o in json.loads(stix.text)["objects"])
    markdown = httpx.get(f"{demo.gateway}/api/v1/investigations/{investigation['id']}/report.md", headers=demo.auth,
                         timeout=30)
    assert markdown.status_code == 200 and demo.world.target[1] in markdown.text
    # Events: typed, in order, every phase, one `done`; no completed tool call made twice, no
    # evidence stored twice (a re-run step reuses what it had done).
    kinds = [e["kind"] for e in seen]
    assert [p for e in seen for p in event_problems(e)] == []  # services/swarm/events.schema.json
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    assert [e["id"] for e in seen] == sorted(e["id"] for e in seen)
    phases = [e["data"]["phase"] for e in seen if e["kind"] == "phase"]
    assert phases == ["ingestion", "hypotheses", "correlation", "counterfactuals", "synthesis"], phases
    completed = Counter(e["data"]["key"] for e in seen if e["kind"] == "tool_result" and e["data"]["status"] == "ok")
    assert max(completed.values()) == 1, completed.most_common(3)
    stored = Counter(e["data"]["evidence"] for e in seen if e["kind"] == "evidence")
    assert max(stored.values()) == 1
    # The evidence led to a file, a social account and a photo: each went to its analyzer.
    analyzed = {(e["data"]["args"]["collector"], e["data"]["args"]["target"]) for e in seen
                if e["kind"] == "tool_call" and e["data"]["tool"] == "collectors.Collect"}
    world = demo.world.localize
    assert {("malware", world("http://cdn-updates.example.net:{port}/download/BrowserUpdate.exe")),
            ("social", "@browserguard@social.example.net"),
            ("geo", world("http://browser-update.example.com:{port}/img/support-desk.jpg"))} <= analyzed, analyzed
    assert {"plan", "tool_call", "tool_result", "evidence", "entity", "relation", "hypothesis", "consensus",
            "budget", "warning", "phase", "done"} <= set(kinds)
    return dict(report)


def swarm_pid(demo: DemoFleet) -> int:
    """The swarm service the fleet's supervisor started (its child running `-m services.swarm`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == demo.process.pid and b"services.swarm" in argv:
            pids.append(int(proc.name))
    assert len(pids) == 1, pids
    return pids[0]


# --- the four modes ------------------------------------------------------------------------------

def test_hierarchical_with_the_cli(demo: DemoFleet) -> None:
    """`bev investigate` follows live and ends in the report; exit code 0 when it completed."""
    body = request_for(demo.world, "hierarchical")
    args = [str(BEV), "investigate", body["target"], "--mode", "hierarchical", "--max-depth", "3", "--json",
            "--data-dir", str(demo.data_dir)]
    for allowed in body["scope"]["allow"]:
        args += ["--allow", allowed]
    for seed in body["seeds"]:
        args += ["--seed", seed]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    investigation = json.loads(result.stdout)
    seen = events(demo, investigation["id"])  # replayed from the first event, after the fact
    report = check_finished(demo, investigation, seen)
    assert report["consensus"]["rule"] == "leader"
    assert list(report["consensus"]["rankings"]) == ["leader"]


def test_democratic_agents_propose_independently_and_vote(demo: DemoFleet) -> None:
    investigation = start(demo, request_for(demo.world, "democratic"))
    seen = events(demo, investigation["id"])
    final = httpx.get(f"{demo.gateway}/api/v1/investigations/{investigation['id']}", headers=demo.auth,
                      timeout=10).json()
    report = check_finished(demo, final, seen)
    consensus = report["consensus"]
    assert consensus["rule"] == "borda"
    proposed = {e["data"]["id"] for e in seen if e["kind"] == "hypothesis"}
    assert len({e["data"]["agent"] for e in seen if e["kind"] == "hypothesis"}) >= 3  # three agents, independently
    assert len(consensus["rankings"]) >= 3
    for ranking in consensus["rankings"].values():  # every agent ranked every hypothesis
        assert sorted(ranking) == sorted(proposed)
    assert consensus["winner"] == max(consensus["scores"], key=lambda h: consensus["scores"][h])
    assert all(h["votes"] for h in report["hypotheses"])
    assert len([e for e in seen if e["kind"] == "vote"]) == len(consensus["rankings"])
    # A late subscriber on JetStream replays every event too (BEV_EVENTS, bev.events.investigation.<id>.<kind>).
    replayed = asyncio.run(jetstream_events(demo, investigation["id"], len(seen)))
    assert [(e["id"], e["kind"]) for e in replayed] == [(e["id"], e["kind"]) for e in seen]


async def jetstream_events(demo: DemoFleet, investigation_id: str, expected: int) -> list[dict[str, Any]]:
    creds = demo.state["nats"]
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"])
    try:
        sub = await nc.jetstream().subscribe(f"bev.events.investigation.{investigation_id}.>", ordered_consumer=True,
                                             deliver_policy=DeliverPolicy.ALL)
        found: list[dict[str, Any]] = []
        while len(found) < expected:
            message = await sub.next_msg(timeout=10)
            found.append(json.loads(message.data))
        return sorted(found, key=lambda e: e["id"])
    finally:
        await nc.close()


def test_autonomous_survives_its_replica_killed(demo: DemoFleet) -> None:
    """SIGKILL the swarm mid-investigation: the restarted replica resumes it from the last step."""
    investigation = start(demo, request_for(demo.world, "autonomous"))
    wait_for(demo, investigation["id"], lambda i: i["usage"]["tool_calls"] >= 6)
    os.kill(swarm_pid(demo), signal.SIGKILL)
    wait_for(demo, investigation["id"], lambda i: True, timeout_s=120)  # 503 until the supervisor restarts it
    seen = events(demo, investigation["id"])
    final = httpx.get(f"{demo.gateway}/api/v1/investigations/{investigation['id']}", headers=demo.auth,
                      timeout=10).json()
    report = check_finished(demo, final, seen)
    assert report["consensus"]["rule"] == "borda"
    workers = {e["data"]["agent"] for e in seen if e["kind"] == "tool_call" and e["data"]["role"] == "worker"}
    assert workers == {"worker-1", "worker-2", "worker-3"}  # the blackboard's claims, in turn


def test_hybrid_survives_a_fleet_restart(demo: DemoFleet) -> None:
    investigation = start(demo, request_for(demo.world, "hybrid"))
    wait_for(demo, investigation["id"], lambda i: i["usage"]["tool_calls"] >= 6)
    demo.restart()
    final = wait_for(demo, investigation["id"], lambda i: i["status"] in FINISHED, timeout_s=900)
    seen = events(demo, investigation["id"])
    report = check_finished(demo, final, seen)
    switches = [e for e in seen if e["kind"] == "mode_switch"]
    if switches:  # low confidence or a conflict: the vote is the democratic one
        assert report["consensus"]["rule"] == "borda" and report["mode_switches"][0]["reason"]
    else:
        assert report["consensus"]["rule"] == "leader"


# --- stopping early ------------------------------------------------------------------------------

def test_cancel_stops_within_five_seconds_and_keeps_the_partial_report(demo: DemoFleet) -> None:
    investigation = start(demo, request_for(demo.world, "democratic"))
    wait_for(demo, investigation["id"], lambda i: i["usage"]["tool_calls"] >= 3)
    started = time.monotonic()
    answer = httpx.delete(f"{demo.gateway}/api/v1/investigations/{investigation['id']}", headers=demo.auth, timeout=30)
    assert answer.status_code == 200
    final = wait_for(demo, investigation["id"], lambda i: i["status"] in FINISHED, timeout_s=10)
    assert time.monotonic() - started < 5
    assert final["status"] == "cancelled"
    report = final["report"]
    report_schema.validate(report)
    assert report["evidence"] and report["entities"]
    check_citations(demo, report)
    again = httpx.delete(f"{demo.gateway}/api/v1/investigations/{investigation['id']}", headers=demo.auth, timeout=30)
    assert again.json()["status"] == "cancelled"  # cancelling a finished one changes nothing


def test_budget_exhaustion_ends_with_a_partial_cited_report(demo: DemoFleet) -> None:
    investigation = start(demo, request_for(demo.world, "hierarchical", max_tool_calls=5))
    seen = events(demo, investigation["id"], timeout_s=300)
    final = httpx.get(f"{demo.gateway}/api/v1/investigations/{investigation['id']}", headers=demo.auth,
                      timeout=10).json()
    assert final["status"] == "budget_exhausted"
    assert final["usage"]["tool_calls"] <= 5
    report = final["report"]
    report_schema.validate(report)
    assert any(w["kind"] == "budget" for w in report["warnings"])
    assert report["entities"]
    check_citations(demo, report)
    assert seen[-1]["data"]["status"] == "budget_exhausted"


def test_bad_targets_are_refused_with_a_message(demo: DemoFleet) -> None:
    for body, fragment in ((request_for(demo.world, "hybrid") | {"target": "PaleMoth"}, "target_type"),
                           (request_for(demo.world, "hybrid") | {"seeds": ["http://169.254.169.254/latest/"]}, "scope")):
        answer = httpx.post(f"{demo.gateway}/api/v1/investigations", headers=demo.auth, json=body, timeout=30)
        assert answer.status_code == 400 and fragment in answer.text, answer.text
    listed = httpx.get(f"{demo.gateway}/api/v1/investigations", headers=demo.auth, params={"limit": 2},
                       timeout=10).json()
    assert len(listed["investigations"]) == 2 and listed["next_cursor"]
    following = httpx.get(f"{demo.gateway}/api/v1/investigations", headers=demo.auth,
                          params={"limit": 2, "cursor": listed["next_cursor"]}, timeout=10).json()
    assert not {i["id"] for i in following["investigations"]} & {i["id"] for i in listed["investigations"]}
    agents = httpx.get(f"{demo.gateway}/api/v1/agents", headers=demo.auth, timeout=10).json()
    assert {r["name"] for r in agents["roles"]} >= {"leader", "worker", "monitor", "crypto"}


def test_metrics_count_investigations_and_tool_calls(demo: DemoFleet) -> None:
    result = subprocess.run([str(BEV), "status", "--json", "--data-dir", str(demo.data_dir)],
                            capture_output=True, text=True, timeout=30, check=True)
    swarm = next(i for i in json.loads(result.stdout)["instances"] if i["service"] == "swarm")
    text = httpx.get(f"http://{swarm['metrics_address']}/metrics", timeout=10).text
    assert "bev_tool_executions_total{" in text and "bev_swarm_live_agents" in text
    assert 'bev_osint_analyses_total{mode="hierarchical",status="budget_exhausted"}' in text
    assert "bev_investigation_duration_seconds_bucket{" in text and "bev_investigation_tokens_bucket{" in text
