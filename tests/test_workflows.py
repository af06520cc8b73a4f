"""Workflows end to end, on the real fleet (`bev up`: the swarm on DBOS, collectors' Extract, SmolLM2
on llama.cpp, PostgreSQL), through the gateway's HTTP API.

A five-step DAG extracts defanged indicators from a text, keeps the domains, has the model summarise
them, writes the summary to a file in the workflow's folder and reads it back; every step's output is
checked, and the file is where it should be. A cycle is refused (400) before anything is queued. A
file step aiming outside the workflow's folder (`..`, an absolute path) fails saying why, and writes
nothing. A workflow cancelled mid-model-call ends cancelled; a finished one cannot be cancelled (409).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_fleet import bearer, start_fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FINISHED = {"completed", "failed", "cancelled"}
TEXT = ("Beacon observed: the implant fetched hxxp://evil[.]example[.]com/payload and then called home "
        "to 198.51.100[.]7 every 60 seconds.")


@dataclass
class Fleet:
    data_dir: Path
    http: httpx.Client  # the gateway, with the fleet's admin key


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data_dir = tmp_path_factory.mktemp("workflows-fleet")
    process, state = start_fleet(data_dir)
    with httpx.Client(base_url=str(state["gateway"]), headers=bearer(str(state["api_key"])), timeout=30) as http:
        yield Fleet(data_dir, http)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(90)


def submit(fleet: Fleet, spec: dict[str, Any]) -> dict[str, Any]:
    answer = fleet.http.post("/api/v1/workflows", json=spec)
    assert answer.status_code == 202, answer.text
    workflow = dict(answer.json())
    assert answer.headers["location"] == f"/api/v1/workflows/{workflow['id']}"
    assert workflow["status"] in ("queued", "running")
    return workflow


def get(fleet: Fleet, workflow_id: str) -> dict[str, Any]:
    answer = fleet.http.get(f"/api/v1/workflows/{workflow_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_for(fleet: Fleet, workflow_id: str, statuses: set[str], timeout_s: float = 420) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workflow = get(fleet, workflow_id)
        if workflow["status"] in statuses:
            return workflow
        time.sleep(0.5)
    pytest.fail(f"workflow {workflow_id} not {statuses} within {timeout_s} s: {get(fleet, workflow_id)}")


def steps_of(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in workflow["steps"]}


def test_extract_filter_summarise_write_read(fleet: Fleet) -> None:
    workflow = submit(fleet, {"name": "triage", "steps": [
        {"id": "iocs", "type": "data_processing", "operation": "extract_indicators", "text": TEXT},
        {"id": "domains", "type": "data_processing", "operation": "filter", "depends_on": ["iocs"],
         "input": "iocs", "field": "type", "equals": "domain"},
        {"id": "summary", "type": "llm_generation", "depends_on": ["domains"], "tier": "fast", "max_tokens": 48,
         "prompt": "In one sentence, summarise these suspicious domains for an analyst: {{domains}}"},
        {"id": "save", "type": "file_operations", "operation": "write", "depends_on": ["summary"],
         "path": "summary.txt", "content": "{{summary}}"},
        {"id": "load", "type": "file_operations", "operation": "read", "depends_on": ["save"], "path": "summary.txt"},
    ]})
    assert [s["status"] for s in workflow["steps"]] == ["pending"] * 5
    assert workflow["spec"]["steps"][2]["temperature"] == 0.2  # the service's defaults filled in
    done = wait_for(fleet, workflow["id"], FINISHED)
    steps = steps_of(done)
    assert done["status"] == "completed", done
    assert done["progress"] == 1.0 and done["error"] is None
    assert done["started_at"] and done["finished_at"] and done["created_at"]
    assert all(s["status"] == "completed" and s["error"] is None and s["started_at"] and s["finished_at"]
               for s in done["steps"]), done["steps"]
    indicators = {(i["type"], i["value"]) for i in steps["iocs"]["output"]}
    assert {("domain", "evil.example.com"), ("ipv4", "198.51.100.7"),
            ("url", "http://evil.example.com/payload")} <= indicators
    assert steps["domains"]["output"] == [{"type": "domain", "value": "evil.example.com"}]
    summary = steps["summary"]["output"]
    assert isinstance(summary, str) and summary.strip()
    assert steps["save"]["output"] == {"path": "summary.txt", "bytes": len(summary.encode())}
    assert steps["load"]["output"] == summary
    folder = fleet.data_dir / "workflows" / done["id"]
    assert (folder / "summary.txt").read_text() == summary
    assert sorted(p.name for p in folder.iterdir()) == ["summary.txt"]
    listed = fleet.http.get("/api/v1/workflows", params={"status": "completed"}).json()
    mine = next(w for w in listed["workflows"] if w["id"] == done["id"])
    assert mine["spec"] is None and [s["output"] for s in mine["steps"]] == [None] * 5  # lists carry no outputs
    assert [s["status"] for s in mine["steps"]] == ["completed"] * 5
    # a finished workflow cannot be cancelled
    answer = fleet.http.delete(f"/api/v1/workflows/{done['id']}")
    assert answer.status_code == 409 and answer.json()["code"] == "FAILED_PRECONDITION", answer.text


def test_a_cycle_is_refused_before_anything_runs(fleet: Fleet) -> None:
    before = {w["id"] for w in fleet.http.get("/api/v1/workflows").json()["workflows"]}
    answer = fleet.http.post("/api/v1/workflows", json={"steps": [
        {"id": "a", "type": "llm_generation", "prompt": "{{c}}", "depends_on": ["c"]},
        {"id": "b", "type": "llm_generation", "prompt": "{{a}}", "depends_on": ["a"]},
        {"id": "c", "type": "llm_generation", "prompt": "{{b}}", "depends_on": ["b"]}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "INVALID_ARGUMENT"
    assert "the steps form a cycle: a -> c -> b -> a" in answer.json()["error"]
    answer = fleet.http.post("/api/v1/workflows", json={"steps": [
        {"id": "a", "type": "llm_generation", "prompt": "x", "depends_on": ["ghost"]}]})
    assert answer.status_code == 400 and "'ghost', which is not a step" in answer.json()["error"]
    answer = fleet.http.post("/api/v1/workflows", json={"steps": [
        {"id": "a", "type": "shell", "command": "id"}]})
    assert answer.status_code == 422, answer.text  # not a step type the schema knows
    after = {w["id"] for w in fleet.http.get("/api/v1/workflows").json()["workflows"]}
    assert after == before  # nothing was queued
    assert fleet.http.get("/api/v1/workflows/no-such-id").status_code == 404


def test_file_steps_cannot_leave_the_workflows_folder(fleet: Fleet) -> None:
    passwd = Path("/etc/passwd").read_bytes()
    workflow = submit(fleet, {"steps": [
        {"id": "climb", "type": "file_operations", "operation": "write", "path": "../../etc/passwd",
         "content": "pwned"},
        {"id": "absolute", "type": "file_operations", "operation": "write", "path": str(fleet.data_dir / "x.txt"),
         "content": "pwned"},
        {"id": "secrets", "type": "file_operations", "operation": "read", "path": "../../run/fleet.json"},
        {"id": "after", "type": "file_operations", "operation": "read", "depends_on": ["climb"],
         "path": "summary.txt"},
        {"id": "fine", "type": "file_operations", "operation": "write", "path": "ok.txt", "content": "ok"},
    ]})
    done = wait_for(fleet, workflow["id"], FINISHED)
    steps = steps_of(done)
    assert done["status"] == "failed"
    assert done["error"].startswith("step 'climb' failed: path '../../etc/passwd' climbs out of the workflow's folder")
    assert steps["climb"]["status"] == "failed" and steps["climb"]["output"] is None
    assert "'..' is not allowed" in steps["climb"]["error"]
    assert steps["absolute"]["status"] == "failed" and "is absolute" in steps["absolute"]["error"]
    assert steps["secrets"]["status"] == "failed" and "'..' is not allowed" in steps["secrets"]["error"]
    assert steps["after"]["status"] == "skipped" and steps["after"]["error"] == "climb did not complete"
    assert steps["fine"]["status"] == "completed"  # independent of the failures: it still ran
    assert not (fleet.data_dir / "etc").exists() and not (fleet.data_dir / "x.txt").exists()
    assert Path("/etc/passwd").read_bytes() == passwd
    assert sorted(p.name for p in (fleet.data_dir / "workflows" / done["id"]).iterdir()) == ["ok.txt"]


def test_cancel_stops_a_workflow_mid_model_call(fleet: Fleet) -> None:
    essay = {"type": "llm_generation", "max_tokens": 2048, "temperature": 0.9,
             "prompt": "Write a very long, detailed essay on the history of the Internet, decade by decade."}
    workflow = submit(fleet, {"name": "long", "steps": [
        {"id": "first", **essay}, {"id": "second", **essay, "depends_on": ["first"]},
        {"id": "save", "type": "file_operations", "operation": "write", "path": "essay.txt",
         "content": "{{second}}", "depends_on": ["second"]}]})
    wait_for(fleet, workflow["id"], {"running"} | FINISHED, timeout_s=120)
    answer = fleet.http.delete(f"/api/v1/workflows/{workflow['id']}")
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"] is True
    assert cancelled["finished_at"] is not None
    assert {s["status"] for s in cancelled["steps"]} <= {"cancelled", "completed"}
    assert steps_of(cancelled)["save"]["status"] == "cancelled"
    time.sleep(2)  # the abandoned model call ends on its own; nothing more is recorded
    again = get(fleet, workflow["id"])
    assert again["status"] == "cancelled" and again["steps"] == cancelled["steps"]
    answer = fleet.http.delete(f"/api/v1/workflows/{workflow['id']}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"  # cancelling again changes nothing
    assert not (fleet.data_dir / "workflows" / workflow["id"] / "essay.txt").exists()
