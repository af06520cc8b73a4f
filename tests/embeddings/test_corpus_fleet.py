"""End to end through real processes: `bev up --only embeddings --only gateway` (Vault hands the
service its Postgres DSN, the corpus schema is migrated at start), then documents go in over the
gateway's HTTP API and the CLI, and come back as cited search hits, over HTTP, the official openai
client and `bev search`. With `--bev-live DATA_DIR` the same tests run against a running fleet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

BEV = Path(sys.executable).parent / "bev"
START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    live = request.config.getoption("--bev-live")
    if live:
        yield {"data_dir": Path(live), **json.loads((Path(live) / "run" / "fleet.json").read_text())}
        return
    data_dir = tmp_path_factory.mktemp("corpus-fleet")
    output = data_dir / "up.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [str(BEV), "up", "--data-dir", str(data_dir), "--free-ports", "--only", "embeddings", "--only", "gateway"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "fleet up in" not in output.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.send_signal(signal.SIGINT)
            pytest.fail(f"fleet did not come up:\n{output.read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"data_dir": data_dir, **json.loads((data_dir / "run" / "fleet.json").read_text())}
    process.send_signal(signal.SIGINT)
    process.wait(60)


def test_upload_search_and_resolve_a_citation(fleet: dict[str, Any]) -> None:
    marker = uuid.uuid4().hex[:8]
    text = (f"# Brass Typhoon notes {marker}\n\nBrass Typhoon hid its loader in a fake VPN client and "
            "beaconed to update-check.example over DNS TXT records every ten minutes.")
    auth = {"Authorization": f"Bearer {fleet['api_key']}"}  # the fleet's admin key, from run/fleet.json
    with httpx.Client(base_url=fleet["gateway"], headers=auth, timeout=60) as http:
        uploaded = http.post("/api/v1/documents", files={"file": (f"{marker}.md", text.encode(), "text/markdown")},
                             data={"source": f"e2e-{marker}", "tlp": "amber"})
        assert uploaded.status_code == 202, uploaded.text  # stored durably, ingested by a worker
        job = uploaded.json()
        deadline = time.monotonic() + 60
        while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = http.get(uploaded.headers["location"]).json()
        assert job["status"] == "completed", job
        assert job["title"] == f"Brass Typhoon notes {marker}"
        found = http.get("/api/v1/search", params={"q": "fake VPN client DNS beacon", "source": f"e2e-{marker}"})
        assert found.status_code == 200, found.text
        hit = found.json()["hits"][0]
        document = http.get(f"/api/v1/documents/{hit['document_id']}").json()
        assert document["text"][hit["start"] : hit["end"]] == hit["excerpt"] and "fake VPN client" in hit["excerpt"]
        assert hit["tlp"] == "amber" and document["media_type"] == "text/markdown"
        assert http.post("/api/v1/documents", files={"file": ("x.exe", b"MZ\x90\x00", "application/x-msdownload")}
                         ).status_code == 415
        assert http.post("/api/v1/documents", files={"file": ("big.txt", b"a" * (4 * 1024 * 1024), "text/plain")}
                         ).status_code == 413
        assert http.delete(f"/api/v1/documents/{hit['document_id']}").json()["deleted"] is True
        assert http.get(f"/api/v1/documents/{hit['document_id']}").status_code == 404


def test_openai_client_over_http(fleet: dict[str, Any]) -> None:
    import openai

    client = openai.OpenAI(api_key=fleet["api_key"], base_url=f"{fleet['gateway']}/v1", timeout=60)
    reply = client.embeddings.create(model="all-MiniLM-L6-v2", input=["lateral movement", "data exfiltration"])
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 384 and reply.usage.total_tokens > 0


def test_cli_ingest_and_search_against_the_fleet(fleet: dict[str, Any], tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    note = tmp_path / f"{marker}.txt"
    note.write_text(f"Case {marker}: the courier malware unpacked itself from a PNG steganography payload.")
    data_dir = str(fleet["data_dir"])
    ingest = subprocess.run([str(BEV), "ingest", str(note), "--data-dir", data_dir, "--source", f"cli-{marker}"],
                            capture_output=True, text=True, timeout=120)
    assert ingest.returncode == 0, ingest.stderr
    assert "1 stored" in ingest.stderr
    search = subprocess.run([str(BEV), "search", "steganography payload", "--data-dir", data_dir, "--json",
                             "--source", f"cli-{marker}"], capture_output=True, text=True, timeout=60)
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)["hits"]
    assert hits and marker in hits[0]["excerpt"] and hits[0]["uri"] == note.resolve().as_uri()
