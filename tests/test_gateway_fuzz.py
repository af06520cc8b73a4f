"""Schemathesis against the whole fleet (`bev up`, as tests/test_fleet.py starts it): every operation
of the gateway's OpenAPI schema, with valid and invalid data, every check. The bar: no server error,
every status and body as the schema documents it, valid data accepted and invalid data refused.

It runs the `schemathesis` CLI (all phases: examples, coverage, fuzzing, stateful) with the
configuration below and reads its JSON and JUnit reports. It sends a key of its own, made with
`bev keys create` (every scope, TLP:RED, limits no run reaches), on every request; the schema itself
is served only to a key, so it is fetched with that key into a file first. Schemathesis' ignored_auth
check probes each operation without the key and with a wrong one (401 expected). With
`--bev-live DATA_DIR` it fuzzes an already running fleet. BEV_FUZZ_EXAMPLES (examples per operation)
and BEV_FUZZ_SEED override the defaults; a failure prints how to replay each case (`st replay ID`,
from the directory it names).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bev.access.keys import BOOTSTRAP_ID
from tests.test_fleet import Fleet, bearer, bev_keys, start_fleet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = int(os.environ.get("BEV_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("BEV_FUZZ_SEED", "20261201"))

# The fleet's own settings for the run: what a generated request may make the model do stays cheap
# (tests/gateway_fuzz_hooks.py bounds what the requests ask for).
FLEET_ENV = {
    "BEV_REASONING__DEFAULT_MAX_TOKENS": "16",  # a chat request without max_tokens
    "BEV_REASONING__ANALYZE__PHASE_MAX_TOKENS": "32",  # each Analyze phase's answer
    # Investigations the fuzzer starts stay queued: this fleet tests the API surface, and a hundred
    # investigations running on two cores would only slow every other answer past its limit.
    "BEV_SWARM__QUEUE_POLL_S": "3600",
}

# Statuses valid data may get on top of 2xx, 401, 403, 404, 409, 429. Where an operation adds 400,
# it is because validity there is more than the schema can say; the reason is next to each.
CONFIG = """
workers = 1              # two cores, and one model slot: requests in parallel only wait on each other
request-timeout = 120
continue-on-failure = true  # every failure of an operation, not only its first

[generation]
max-examples = {examples}
database = "none"        # no example database written into the checkout
# The API refuses NUL in every string (400; services/gateway/inputs.py: PostgreSQL cannot store it),
# a rule JSON Schema cannot state, so valid data must not contain one. services/gateway/tests check
# the refusal, for bodies, query parameters, paths and form fields.
allow-x00 = false

[checks]
max_response_time = 60   # the model runs on a CPU

[cache]
enabled = false

# The stateful phase follows what the API says it created: the Location header (investigations,
# workflows, keys, an upload's ingest job). Guessing links from field names would send an upload's
# job's document_id, empty until the job has stored the document, to /api/v1/documents/{{document_id}}.
[phases.stateful.inference]
algorithms = ["location-headers"]

# Collect: whether a target is valid depends on its type and on the collector (a domain for dns,
# a URL for web): 400 says which, and the schema cannot.
[[operations]]
include-path = "/api/v1/collectors/{{name}}/collect"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# Investigations: whether a target can be typed (a bare word needs target_type) and whether seeds
# and allow entries make a sane scope is 400 with the reason; the schema cannot say it.
[[operations]]
include-path = "/api/v1/investigations"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# Workflows: a cycle, a dependency or template naming an unknown step, a tool's arguments and a
# Collect target outside the scope are 400 with the reason; the schema cannot say them.
[[operations]]
include-path = "/api/v1/workflows"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# An investigation's event stream stays open until the investigation ends (here: never, they stay
# queued), which no request timeout can tell from a hang. tests/test_investigations.py and
# services/gateway/tests test it, and its refusals.
[[operations]]
include-path-regex = "/events$"
enabled = false

# Graph query: a Cypher text that does not parse, or writes, is 400 from the graph.
[[operations]]
include-path = "/api/v1/graph/query"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# OpenAI embeddings: `dimensions` must be the model's own (384 for MiniLM), which depends on the model.
[[operations]]
include-path = "/v1/embeddings"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# The operations assistant: a question of spaces only is 400 (the schema cannot say "not blank").
[[operations]]
include-path = "/api/v1/ops/ask"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# API keys: a name of spaces only, or an expiry in the past, is 400 with the reason; the schema
# cannot say either.
[[operations]]
include-path = "/api/v1/keys"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]


# File analysis (the raw body): an empty file is 400, one over the service's limit 413.
[[operations]]
include-path = "/api/v1/files"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "429"]


# Document upload (multipart): an empty file is 400, a type the corpus does not read 415. And
# multipart cannot carry JSON types: the "null" and the array Schemathesis sends as invalid data
# arrive as a text part and a repeated field, which are valid form data, and an optional field left
# out arrives empty (422 for the date). So data rejection is not judged here; the refusals of
# invalid form fields (NUL, bad TLP label, bad date) are tested in services/gateway/tests.
[[operations]]
include-path = "/api/v1/documents"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "415", "422", "429"]
checks.negative_data_rejection.enabled = false
"""


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    live = request.config.getoption("--bev-live")
    if live:
        data_dir = Path(live)
        yield Fleet(data_dir, None, json.loads((data_dir / "run" / "fleet.json").read_text()), data_dir / "up.log")
        return
    data_dir = tmp_path_factory.mktemp("fuzz-fleet")
    process, state = start_fleet(data_dir, env=FLEET_ENV)
    yield Fleet(data_dir, process, state, data_dir / "up.log")
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


@pytest.fixture
def fuzz_key(fleet: Fleet) -> Iterator[dict[str, Any]]:
    """The run's own API key (`bev keys create --json`: its record and `key`); revoked afterwards."""
    created = bev_keys(fleet, "create", "schemathesis", "--scopes", "read,write,admin", "--team", "fuzz",
                       "--tlp", "red", "--requests-per-hour", "10000000", "--tokens-per-day", "1000000000")
    yield created
    bev_keys(fleet, "revoke", str(created["id"]))


@pytest.mark.timeout(1200)
def test_schemathesis_finds_nothing(fleet: Fleet, fuzz_key: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(examples=EXAMPLES))
    key = str(fuzz_key["key"])
    served = httpx.get(f"{fleet.gateway}/openapi.json", headers=bearer(key), timeout=30, trust_env=False)
    assert served.status_code == 200, served.text
    schema = tmp_path / "openapi.json"
    schema.write_text(served.text)
    reports = tmp_path / "reports"
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", str(schema), "--url", fleet.gateway,
               "--header", f"Authorization: Bearer {key}",
               "--checks", "all", "--mode", "all", "--seed", str(SEED), "--report", "junit,json",
               "--report-dir", str(reports), "--no-color", "--output-sanitize", "false"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway_fuzz_hooks",
           "BEV_FUZZ_KEEP_KEYS": f"{fuzz_key['id']},{BOOTSTRAP_ID}",  # never revoked by the run
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    began = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1100)
    elapsed = time.monotonic() - began
    output = result.stdout + result.stderr
    [json_report] = reports.glob("json-*.json")
    [junit_report] = reports.glob("junit-*.xml")
    run = json.loads(json_report.read_text())
    suite = ElementTree.parse(junit_report).getroot()
    failed = [case.get("name") for case in suite.iter("testcase") if len(case)]
    print(f"schemathesis {run['schemathesis_version']}: {run['test_cases']['generated']} cases over "
          f"{run['operations']['tested']} operations in {elapsed:.0f}s (seed {SEED}); "
          f"failures {run['failures'] or 'none'}; errors {run['errors'] or 'none'}")
    failures_text = output[output.find("=== FAILURES"):] if "=== FAILURES" in output else output[-6000:]
    assert result.returncode == 0 and not failed and not run["failures"] and not run["errors"], (
        f"operations failing: {failed}\n(replay from {tmp_path})\n{failures_text[-12000:]}")
    # Every operation but the one the config leaves out (the event stream) was tested.
    assert run["complete"] and run["operations"]["tested"] == run["operations"]["selected"] == run["operations"]["total"] - 1
    assert run["test_cases"]["generated"] >= 10 * run["operations"]["tested"]  # it did run
    # Those operations include the keys' and the audit log's; and the run did not revoke its own key.
    assert {"/api/v1/keys", "/api/v1/keys/{key_id}", "/api/v1/audit"} <= set(served.json()["paths"])
    still = httpx.get(f"{fleet.gateway}/api/v1/keys/{fuzz_key['id']}", headers=bearer(key), timeout=30,
                      trust_env=False)
    assert still.status_code == 200 and still.json()["state"] == "active", still.text
