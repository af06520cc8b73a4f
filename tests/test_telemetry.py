"""Telemetry: /metrics per process, JSON logs carrying trace ids, the RPC layer's metric figures
and its own W3C trace-context reading and writing (held equal to prometheus_client's metrics and
OpenTelemetry's propagator and SDK, which they stand in for on the hot path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from bev.telemetry import (
    LATENCY_BUCKETS,
    ensure_tracer_provider,
    extract_trace,
    inject_trace,
    rpc_method_stats,
    rpc_span,
    start_metrics_server,
)


def test_metrics_endpoint_serves_rpc_metrics() -> None:
    stats = rpc_method_stats("metrics-test", "Ping", "nats")
    stats.started()
    stats.finished("OK", 0.002)
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


def _samples(registry: CollectorRegistry, service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every bev_rpc_* sample of `service`, by (name, labels); `_created` ones as 1 (present)."""
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith("bev_rpc_") and sample.labels.get("service") == service:
                value = 1.0 if sample.name.endswith("_created") else sample.value
                found[(sample.name, tuple(sorted(sample.labels.items())))] = value
    return found


def test_rpc_metrics_expose_what_prometheus_client_metrics_did() -> None:
    """Same names, labels, buckets, counts and sums as the Counter/Histogram/Gauge they replace
    (dashboards, alert rules and the monitoring service query them)."""
    reference = CollectorRegistry()
    labels = ["service", "method", "transport"]
    requests = Counter("bev_rpc_requests_total", "", [*labels, "code"], registry=reference)
    errors = Counter("bev_rpc_errors_total", "", [*labels, "code"], registry=reference)
    latency = Histogram("bev_rpc_latency_seconds", "", labels, buckets=LATENCY_BUCKETS, registry=reference)
    in_flight = Gauge("bev_rpc_in_flight", "", labels, registry=reference)
    calls = [("Get", "OK", 0.0004), ("Get", "OK", 0.0005), ("Get", "NOT_FOUND", 0.003), ("Put", "INTERNAL", 61.0),
             ("Put", "OK", 1.0), ("Get", "DEADLINE_EXCEEDED", 30.0)]
    for method, code, seconds in calls:
        ours = rpc_method_stats("parity-test", method, "nats")
        ours.started()
        ours.finished(code, seconds)
        key = ("parity-test", method, "nats")
        requests.labels(*key, code).inc()
        if code != "OK":
            errors.labels(*key, code).inc()
        latency.labels(*key).observe(seconds)
        in_flight.labels(*key).set(0)
    rpc_method_stats("parity-test", "Get", "nats").started()  # one call still running
    in_flight.labels("parity-test", "Get", "nats").inc()
    ours, theirs = _samples(REGISTRY, "parity-test"), _samples(reference, "parity-test")
    # 5 (method, code) request counts and 3 error counts, each with its _created; per method 17
    # buckets, _count, _sum and _created; 2 in-flight gauges.
    assert ours == theirs and len(theirs) == 2 * (5 + 3) + 2 * (len(LATENCY_BUCKETS) + 1 + 3) + 2
    assert REGISTRY.get_sample_value("bev_rpc_in_flight", {"service": "parity-test", "method": "Get",
                                                           "transport": "nats"}) == 1
    rpc_method_stats("parity-test", "Get", "nats").finished("OK", 0.001)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("headers", [
    {"traceparent": TRACEPARENT},
    {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"},
    {"traceparent": " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 "},
    {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future"},
    {"traceparent": TRACEPARENT + "-extra"},                                  # version 00 has no extra
    {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},  # forbidden version
    {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},  # zero trace id
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"},  # zero span id
    {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"},  # upper case
    {"traceparent": "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01"},    # short
    {"traceparent": TRACEPARENT, "tracestate": "x" * 600},                    # tracestate too long
    {"traceparent": "0" * 600},
    {"traceparent": ""},
    {},
])
def test_extract_trace_reads_what_the_w3c_propagator_reads(headers: dict[str, str]) -> None:
    expected = trace.get_current_span(TraceContextTextMapPropagator().extract(headers)).get_span_context()
    got = extract_trace(headers)
    if not expected.is_valid:
        assert got is None
    else:
        assert got == expected and got.is_remote and got.trace_state == expected.trace_state


@pytest.mark.parametrize("state", [None, TraceState([("congo", "t61rcWkgMzE")])])
@pytest.mark.parametrize("flags", [0, 1, 3])
def test_inject_trace_writes_what_the_w3c_propagator_writes(state: TraceState | None, flags: int) -> None:
    span_context = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=False,
                               trace_flags=TraceFlags(flags), trace_state=state)
    expected: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(expected, trace.set_span_in_context(NonRecordingSpan(span_context)))
    got: dict[str, str] = {}
    inject_trace(got, span_context)
    assert got == expected
    assert extract_trace(got) == SpanContext(span_context.trace_id, span_context.span_id, is_remote=True,
                                             trace_flags=span_context.trace_flags, trace_state=state)
    nothing: dict[str, str] = {}
    inject_trace(nothing, trace.INVALID_SPAN_CONTEXT)
    assert nothing == {}


def test_unrecorded_rpc_spans_are_the_sdks() -> None:
    """With nothing recording (the fleet's default), rpc_span builds the span the SDK's tracer would:
    a NonRecordingSpan with the parent's trace id and tracestate, a new span id, unsampled flags."""
    ensure_tracer_provider()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider) and provider.sampler is ALWAYS_OFF
    tracer = trace.get_tracer("test")
    headers: dict[str, str] = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"}
    sdk = tracer.start_span("s", context=TraceContextTextMapPropagator().extract(headers), kind=SpanKind.SERVER)
    with rpc_span(tracer, "s", SpanKind.SERVER, headers) as server:
        assert trace.get_current_span() is server  # current while the call runs
        ours = server.get_span_context()
        assert not server.is_recording() and type(server) is type(sdk)
        assert (ours.trace_id, ours.trace_flags, ours.trace_state, ours.is_remote) == (
            sdk.get_span_context().trace_id, sdk.get_span_context().trace_flags, sdk.get_span_context().trace_state,
            False)
        assert ours.span_id not in (sdk.get_span_context().span_id, 0xB7AD6B7169203331)
        child_sdk = tracer.start_span("c", kind=SpanKind.CLIENT)  # a call the handler makes
        with rpc_span(tracer, "c", SpanKind.CLIENT) as client:
            theirs = child_sdk.get_span_context()
            mine = client.get_span_context()
            assert (mine.trace_id, mine.trace_flags, mine.trace_state) == (
                theirs.trace_id, theirs.trace_flags, theirs.trace_state)
            assert mine.span_id != ours.span_id
    assert trace.get_current_span() is not server  # detached on exit
    with rpc_span(tracer, "root", SpanKind.SERVER, {}) as root:  # no traceparent: a new trace
        root_sdk = tracer.start_span("root", context=otel_context.Context(), kind=SpanKind.SERVER)
        assert root.get_span_context().trace_id not in (0, ours.trace_id)
        assert root.get_span_context().trace_flags == root_sdk.get_span_context().trace_flags


def test_recorded_rpc_spans_join_the_callers_trace() -> None:
    """With an exporter configured, RPC spans are the SDK's own, recorded and exported: the server's
    span is the child of the client's, over a real NATS round trip."""
    script = """
import asyncio, json, sys, tempfile
from pathlib import Path
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from bev.settings import TelemetrySettings
from bev.telemetry import configure_tracing
from bev.engines import NatsServer
from bev.echo.v1 import echo_pb2
from bev.echo.v1.echo_rpc import EchoClient
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from tests.rpc.echo import Echo

configure_tracing("probe", TelemetrySettings(trace_exporter="console", trace_sample_ratio=1.0))
exported = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exported))

async def main(url):
    async with serving_on_nats(Echo(InstanceInfo(service="echo")), url) as nc:
        with trace.get_tracer("probe").start_as_current_span("analyst"):
            info = await EchoClient.over_nats(nc, timeout_s=5).WhoAmI(echo_pb2.EchoRequest())
    print("SPANS", json.dumps({"who": info.trace_id, **{s.kind.name: {
        "name": s.name, "trace": format(s.context.trace_id, "032x"), "span": s.context.span_id,
        "parent": s.parent.span_id if s.parent else None} for s in exported.get_finished_spans()}}))

with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
    asyncio.run(main(server.url))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    # (the console exporter prints the spans on stdout too)
    spans = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("SPANS "))[6:])
    analyst, client, server = spans["INTERNAL"], spans["CLIENT"], spans["SERVER"]
    assert analyst["name"] == "analyst" and client["name"] == server["name"] == "bev.echo.v1.Echo/WhoAmI"
    assert client["parent"] == analyst["span"] and server["parent"] == client["span"]
    assert analyst["trace"] == client["trace"] == server["trace"] == spans["who"]
