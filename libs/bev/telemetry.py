"""Logs, metrics and traces, set up the same way in every process.

- Logs: structlog, one JSON object per line, with service, trace_id and span_id.
- Metrics: Prometheus, one /metrics endpoint per process; the RPC layer records
  per-method counts, latency, in-flight and errors.
- Traces: OpenTelemetry. Spans are always created so trace ids reach logs and
  NATS headers/gRPC metadata; exporting them is opt-in (console or OTLP/HTTP).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from bev.settings import TelemetrySettings

RPC_REQUESTS = Counter(
    "bev_rpc_requests_total", "RPCs handled, by final status code", ["service", "method", "transport", "code"]
)
RPC_ERRORS = Counter(
    "bev_rpc_errors_total", "RPCs that ended with a non-OK status", ["service", "method", "transport", "code"]
)
RPC_LATENCY = Histogram(
    "bev_rpc_latency_seconds",
    "Time from request received to response sent (streams: to the last message)",
    ["service", "method", "transport"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RPC_IN_FLIGHT = Gauge("bev_rpc_in_flight", "RPCs being handled now", ["service", "method", "transport"])


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event["trace_id"] = format(span.trace_id, "032x")
        event["span_id"] = format(span.span_id, "016x")
    return event


def configure_logging(service: str, settings: TelemetrySettings) -> None:
    """Route structlog and stdlib logging to stderr, JSON by default."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    structlog.contextvars.bind_contextvars(service=service)


def configure_tracing(service: str, settings: TelemetrySettings) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": f"bev-{service}"}))
    exporter: SpanExporter | None = None
    if settings.trace_exporter == "console":
        exporter = ConsoleSpanExporter()
    elif settings.trace_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def ensure_tracer_provider() -> None:
    """Give trace ids to library users (tests, CLI) that did not configure tracing."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics on a background thread; returns the bound port (port 0 = pick one)."""
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_port
    return bound


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
