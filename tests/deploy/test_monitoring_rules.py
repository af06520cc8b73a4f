"""The Prometheus rules of the monitoring node (deploy/oracle1/rules/): promtool accepts them, their
unit tests (rules/tests/*.yml, `promtool test rules`) pass, every alert is tested both firing and
staying quiet, and Prometheus' config and container load them.

promtool comes from the Debian `prometheus` package (`make setup` installs it); without it the
promtool tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bev.compose import render_node, render_prometheus
from bev.compose.rules import LARGEST_FINITE_BUCKET_S, THRESHOLD_METRIC, latency_thresholds
from bev.fleet import client_class
from bev.manifest import DEFAULT_MANIFEST, Manifest, load_manifest
from tests.deploy.test_dashboards import CONTRACT_METRICS, metric_names

NODE_DIR = DEFAULT_MANIFEST.parent / "oracle1"
RULES_DIR = NODE_DIR / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(DEFAULT_MANIFEST)


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    if found is None:
        pytest.skip("promtool not found: install Debian package `prometheus` (apt-get install -y prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False)


def rules_of(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for rule in rules_of(path) if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for path in RULE_FILES for rule in rules_of(path) if "record" in rule}


# --- promtool ----------------------------------------------------------------------------------


def test_rule_files_pass_promtool_check() -> None:
    assert {p.name for p in RULE_FILES} == {"alerts.yml", "recording.yml", "rpc_latency_thresholds.yml"}
    result = run_promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/oracle1/rules/tests/"
    result = run_promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    # Proves the unit tests compare annotations exactly: one changed figure fails them.
    source = RULES_DIR / "tests" / "service_down.yml"
    text = source.read_text(encoding="utf-8").replace("(up = 0)", "(up = 1)", 1)
    broken = tmp_path / "service_down.yml"
    broken.write_text(text.replace("../alerts.yml", str(RULES_DIR / "alerts.yml")), encoding="utf-8")
    result = run_promtool("test", "rules", str(broken))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "FAILED" in output and "(up = 0)" in output  # what the rule gave


def test_prometheus_config_loads_the_rules(manifest: Manifest) -> None:
    # Relative to prometheus.yml: /etc/prometheus/rules in the container, rules/ beside the file here.
    config = yaml.safe_load(render_prometheus(manifest))
    assert config["rule_files"] == ["rules/*.yml"]
    prometheus = yaml.safe_load(render_node(manifest, "oracle1"))["services"]["prometheus"]
    binds = {v["source"]: v for v in prometheus["volumes"] if isinstance(v, dict)}
    assert binds["./prometheus.yml"]["target"] == "/etc/prometheus/prometheus.yml"
    assert binds["./rules"]["target"] == "/etc/prometheus/rules" and binds["./rules"]["read_only"]
    result = run_promtool("check", "config", str(NODE_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 rule files found" in result.stdout


# --- what the rules say ------------------------------------------------------------------------


def test_every_alert_has_severity_and_annotations_with_its_figure() -> None:
    names = set()
    for rule in alert_rules():
        names.add(rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert "$value" in rule["annotations"]["description"], f"{rule['alert']}: the description gives no figure"
    assert names == {
        "ServiceDown", "EngineDown", "NodeDown", "HighErrorRatio", "HighHttpErrorRatio", "HighLatency", "QueueBacklog",
        "JetStreamLag", "VaultTokenRenewalFailures", "DiskSpaceLow", "InferenceBackendDown", "CollectorFailing",
    }


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a unit-test case where it fires, with severity, service and both annotations
    expected, and one where it must not fire (the near miss: an idle service, a short blip)."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                alerts = check.get("exp_alerts") or []
                (fired if alerts else quiet).add(check["alertname"])
                for alert in alerts:
                    assert {"severity", "service"} <= set(alert["exp_labels"]), (path.name, check)
                    assert set(alert["exp_annotations"]) == {"summary", "description"}, (path.name, check)
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - fired == set(), "alerts no test sees firing"
    # An empty expectation is the pending window; the near misses beside a firing series (an idle
    # service, client errors, a short blip) are proven by exp_alerts lists being exact.
    assert alerts - quiet == set(), "alerts with no case where they stay quiet"


def test_rules_read_contract_metrics_and_recorded_series() -> None:
    recorded = recorded_names()
    assert "bev:reasoning_tokens_per_second:rate1m" in recorded
    for path in RULE_FILES:
        for rule in rules_of(path):
            names = metric_names(rule["expr"])
            if rule["expr"].startswith("vector("):
                assert names == set()  # a latency threshold: a constant
                continue
            assert names, rule
            unknown = names - CONTRACT_METRICS - recorded
            assert not unknown, f"{rule.get('alert') or rule['record']} reads {sorted(unknown)}"


def test_latency_thresholds_are_half_each_methods_deadline(manifest: Manifest) -> None:
    thresholds = {(s, m): t for s, m, t in latency_thresholds(manifest)}
    for service in manifest.services:
        for method in client_class(service).SERVICE.methods.values():
            key = (service, method.name)
            if method.server_streaming or method.deadline_s / 2 >= LARGEST_FINITE_BUCKET_S:
                assert key not in thresholds, f"{key}: a stream or a long call has no latency threshold"
            else:
                assert thresholds[key] == method.deadline_s / 2
    # The long calls the issue names: generation and analysis are left out, cheap lookups are in.
    assert ("reasoning", "Analyze") not in thresholds and ("reasoning", "ChatStream") not in thresholds
    assert ("swarm", "WatchInvestigation") not in thresholds
    assert thresholds[("reasoning", "Health")] == 1.5
    generated = rules_of(RULES_DIR / "rpc_latency_thresholds.yml")
    assert {(r["labels"]["service"], r["labels"]["method"]): r["expr"] for r in generated} == {
        key: f"vector({value:g})" for key, value in thresholds.items()
    }
    assert {r["record"] for r in generated} == {THRESHOLD_METRIC}
