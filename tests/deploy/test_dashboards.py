"""The Grafana dashboards (bev.compose.dashboards): the committed JSON is what the generator makes now,
every panel queries the provisioned Prometheus, every query parses (promtool) and names only metrics
of the C6 contract or series the recording rules record, and the Grafana container loads them.

The live half (each query returns series from a real Prometheus scraping the fleet) is the fleet
test's: it evaluates bev.compose.dashboards.panel_queries().
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bev.compose import render_node
from bev.compose.dashboards import (
    DASHBOARDS_IN_CONTAINER,
    DATASOURCE_UID,
    NO_GPU,
    PROVISIONING_IN_CONTAINER,
    RATE_INTERVAL,
    evaluable,
    panel_queries,
    queries_that_may_be_empty,
    render_dashboard_provider,
    render_dashboards,
)
from bev.manifest import DEFAULT_MANIFEST, Manifest, load_manifest

GRAFANA_DIR = DEFAULT_MANIFEST.parent / "oracle1" / "grafana"
RULES_DIR = DEFAULT_MANIFEST.parent / "oracle1" / "rules"
UIDS = ("bev-fleet", "bev-investigations", "bev-inference", "bev-collectors")

# The metric names of the C6 contract (exposition names), as the services export them.
HISTOGRAMS = {
    "bev_rpc_latency_seconds",
    "bev_http_request_duration_seconds",
    "bev_reasoning_time_to_first_token_seconds",
    "bev_reasoning_decode_tokens_per_second",
    "bev_investigation_duration_seconds",
    "bev_investigation_tokens",
}
CONTRACT_METRICS = {
    "up",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
    "bev_rpc_requests_total", "bev_rpc_errors_total", "bev_rpc_in_flight", "bev_rpc_client_retries_total",
    "bev_reasoning_backend_requests_total", "bev_reasoning_backend_failures_total",
    "bev_reasoning_failovers_total", "bev_reasoning_tier_fallbacks_total", "bev_reasoning_rejected_total",
    "bev_reasoning_queue_depth", "bev_reasoning_in_flight", "bev_reasoning_backend_healthy",
    "bev_reasoning_backend_drained", "bev_reasoning_backend_busy_seconds_total",
    "bev_reasoning_completion_tokens_total", "bev_reasoning_prompt_tokens_total",
    "bev_tool_executions_total", "bev_osint_analyses_total", "bev_swarm_live_agents",
    "bev_http_requests_total", "bev_http_requests_in_flight", "bev_request_count_total",
    "bev_cache_requests_total", "bev_cache_hit_rate", "bev_threat_detections_total",
    "bev_celery_queue_depth", "bev_embeddings_queue_depth", "bev_vault_token_renewals_total",
    "bev_disk_free_bytes", "bev_disk_total_bytes",
    "bev_gpu_utilization_ratio", "bev_gpu_memory_used_bytes", "bev_gpu_memory_total_bytes",
    "bev_collector_runs_total", "bev_collector_paused",
    "bev_jetstream_consumer_pending", "bev_jetstream_consumer_ack_pending", "bev_jetstream_stream_messages",
    "bev_monitoring_incidents_open", "bev_monitoring_anomalies_total", "bev_monitoring_healing_actions_total",
} | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTORS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
# Not after a digit: the unit of a duration (`offset 15m`) is no name.
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\()?)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label matchers,
    ranges and by/on clauses are removed, that are not function names or keywords."""
    text = _GROUPINGS.sub(" ", _RANGES.sub(" ", _SELECTORS.sub(" ", _STRINGS.sub(" ", expr))))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if match.group(1) or match.group(0) in _KEYWORDS:
            continue  # a function call, or an operator word
        names.add(match.group(0))
    return names


def recorded_names() -> set[str]:
    names = set()
    for path in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {
        name.removesuffix(".json"): json.loads((GRAFANA_DIR / "dashboards" / name).read_text(encoding="utf-8"))
        for name in render_dashboards()
    }


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


# --- generated, and current --------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    rendered = render_dashboards()
    assert sorted(rendered) == sorted(f"{uid}.json" for uid in UIDS)
    committed = sorted(p.name for p in (GRAFANA_DIR / "dashboards").glob("*.json"))
    assert committed == sorted(rendered), "a dashboard file the generator does not make"
    for name, text in rendered.items():
        assert (GRAFANA_DIR / "dashboards" / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run `make deploy-files` and commit the result"
        )
    provider = GRAFANA_DIR / "provisioning" / "dashboards" / "bev.yaml"
    assert provider.read_text(encoding="utf-8") == render_dashboard_provider()


def test_every_panel_queries_the_provisioned_prometheus(dashboards: dict[str, dict[str, Any]]) -> None:
    datasource = {"type": "prometheus", "uid": DATASOURCE_UID}
    for uid, board in dashboards.items():
        assert board["uid"] == uid
        titles = [p["title"] for p in panels(board)]
        assert len(titles) == len(set(titles)), f"{uid}: panel titles repeat"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{uid}: panel ids repeat"
        for panel in panels(board):
            where = f"{uid} / {panel['title']}"
            assert panel["datasource"] == datasource, where
            assert panel["targets"], f"{where}: no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)) and all(refs), where
            for target in panel["targets"]:
                assert target["datasource"] == datasource, where
                assert target["expr"].strip(), where


def test_panel_queries_lists_every_query(dashboards: dict[str, dict[str, Any]]) -> None:
    in_json = [
        (uid, panel["title"], evaluable(target["expr"]))
        for uid, board in dashboards.items()
        for panel in panels(board)
        for target in panel["targets"]
    ]
    assert sorted(panel_queries()) == sorted(in_json)
    assert {uid for uid, _, _ in panel_queries()} == set(UIDS)
    for _, _, expr in panel_queries():
        assert "$" not in expr, f"a Grafana variable is left in {expr!r}"
    assert evaluable(f"rate(x[{RATE_INTERVAL}])") == "rate(x[1m])"


# --- the queries -------------------------------------------------------------------------------


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool check rules parses each expression (wrapped as a recording rule)."""
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    if promtool is None:
        pytest.skip("promtool not found: install Debian package `prometheus` (apt-get install -y prometheus)")
    queries = panel_queries()
    rules = [{"record": f"dashboard_query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_queries_use_only_contract_metrics_and_recorded_series() -> None:
    allowed = CONTRACT_METRICS | recorded_names()
    for uid, title, expr in panel_queries():
        names = metric_names(expr)
        assert names, f"{uid} / {title}: no metric in {expr!r}"
        for name in names:
            assert re.fullmatch(r"bev_[a-z_]+|bev:[a-z0-9_:]+|process_[a-z_]+|up", name), (uid, title, name)
        assert names <= allowed, f"{uid} / {title}: {sorted(names - allowed)} are not contract metrics"
    # The inference dashboard reads tokens/s from the recording rule.
    assert any("bev:reasoning_tokens_per_second:rate1m" in expr for uid, _, expr in panel_queries()
               if uid == "bev-inference")


def test_metric_names_reads_selectors_not_labels() -> None:
    assert metric_names('sum by (service, node) (rate(bev_rpc_errors_total{code=~"INTERNAL|up"}[5m]))') == {
        "bev_rpc_errors_total"
    }
    assert metric_names("bev_disk_free_bytes / on (path) group_left bev_disk_total_bytes < 0.1") == {
        "bev_disk_free_bytes", "bev_disk_total_bytes"
    }
    assert metric_names("sum(1 - up) or vector(0)") == {"up"}
    assert metric_names("x > 0 unless x offset 15m") == {"x"}


def test_gpu_panels_say_they_are_empty_without_a_gpu(dashboards: dict[str, dict[str, Any]]) -> None:
    gpu_panels = [p for p in panels(dashboards["bev-inference"]) if "bev_gpu_" in json.dumps(p["targets"])]
    assert len(gpu_panels) == 2
    for panel in gpu_panels:
        assert panel["description"] == NO_GPU
        assert "No data without a GPU" in panel["description"]
    may_be_empty = queries_that_may_be_empty()
    for uid, title, expr in panel_queries():
        if "bev_gpu_" in expr:
            assert may_be_empty[(uid, title, expr)] == NO_GPU
    assert set(may_be_empty) <= set(panel_queries())


def test_panel_counts(dashboards: dict[str, dict[str, Any]]) -> None:
    counts = {uid: len(panels(board)) for uid, board in dashboards.items()}
    assert counts == {"bev-fleet": 23, "bev-investigations": 11, "bev-inference": 15, "bev-collectors": 10}


# --- Grafana loads them ------------------------------------------------------------------------


def test_grafana_container_mounts_the_dashboards_and_their_provider() -> None:
    manifest: Manifest = load_manifest(DEFAULT_MANIFEST)
    grafana = yaml.safe_load(render_node(manifest, "oracle1"))["services"]["grafana"]
    binds = {v["source"]: v for v in grafana["volumes"] if isinstance(v, dict)}
    assert binds["./grafana/dashboards"]["target"] == DASHBOARDS_IN_CONTAINER
    assert binds["./grafana/provisioning/dashboards"]["target"] == PROVISIONING_IN_CONTAINER
    assert all(b["read_only"] for b in binds.values())
    provider = yaml.safe_load(render_dashboard_provider())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == DASHBOARDS_IN_CONTAINER
    doc = yaml.safe_load(render_node(manifest, "oracle1"))
    datasources = yaml.safe_load(doc["configs"]["grafana_datasources"]["content"])["datasources"]
    assert [d["uid"] for d in datasources if d["type"] == "prometheus"] == [DATASOURCE_UID]
