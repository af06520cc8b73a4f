"""Telemetry: /metrics per process, JSON logs carrying trace ids."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from prometheus_client import REGISTRY

from bev.telemetry import RPC_REQUESTS, start_metrics_server


def test_metrics_endpoint_serves_rpc_metrics() -> None:
    RPC_REQUESTS.labels("metrics-test", "Ping", "nats", "OK").inc()
    port = start_metrics_server("127.0.0.1", 0)
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'bev_rpc_requests_total{code="OK",method="Ping",service="metrics-test",transport="nats"} 1.0' in body
    for family in ("bev_rpc_latency_seconds", "bev_rpc_in_flight", "bev_rpc_errors_total"):
        assert f"# TYPE {family}" in body
    assert REGISTRY.get_sample_value("bev_rpc_requests_total", {"code": "OK", "method": "Ping",
                                     "service": "metrics-test", "transport": "nats"}) == 1.0


def test_json_logs_carry_service_and_trace_id() -> None:
    # A subprocess, because logging configuration is process-wide.
    script = """
from bev.settings import TelemetrySettings
from bev.telemetry import configure_logging, configure_tracing, get_logger
from opentelemetry import trace
configure_logging("probe", TelemetrySettings())
configure_tracing("probe", TelemetrySettings())
with trace.get_tracer("t").start_as_current_span("s") as span:
    get_logger("x").info("hello", target="example.org")
    print(format(span.get_span_context().trace_id, "032x"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["event"] == "hello" and line["service"] == "probe" and line["target"] == "example.org"
    assert line["trace_id"] == result.stdout.strip()
    assert line["level"] == "info" and "timestamp" in line


def test_spans_are_recorded_only_when_exported() -> None:
    script = """
from bev.settings import TelemetrySettings
from bev.telemetry import configure_tracing
from opentelemetry import trace
import sys
configure_tracing("probe", TelemetrySettings(trace_exporter=sys.argv[1]))
with trace.get_tracer("t").start_as_current_span("collect-dns") as span:
    print("recording" if span.is_recording() else "not-recording", span.get_span_context().is_valid)
trace.get_tracer_provider().shutdown()
"""
    quiet = subprocess.run([sys.executable, "-c", script, "none"], capture_output=True, text=True, timeout=30, check=True)
    assert quiet.stdout.strip() == "not-recording True"  # trace ids without the cost of recording
    exported = subprocess.run([sys.executable, "-c", script, "console"], capture_output=True, text=True, timeout=30,
                              check=True)
    assert exported.stdout.startswith("recording True")
    assert '"name": "collect-dns"' in exported.stdout  # the console exporter printed the span
