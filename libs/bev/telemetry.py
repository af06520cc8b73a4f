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
from types import TracebackType
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import set_global_textmap
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
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
RPC_CLIENT_RETRIES = Counter(
    "bev_rpc_client_retries_total",
    "Idempotent calls sent a second time after an unavailable or silent instance, by the first attempt's code",
    ["service", "method", "code"],
)


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


def _sampler(settings: TelemetrySettings) -> Sampler:
    """Record spans only when something exports them.

    With no exporter (the default) spans are non-recording: they still get trace ids, which
    propagate through NATS headers and gRPC metadata and reach the logs, but skip building span
    objects nobody reads (about half the RPC layer's own CPU per call, see bench/README.md).
    """
    if settings.trace_exporter == "none":
        return ALWAYS_OFF
    return ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))


def _tracer_provider(service: str, settings: TelemetrySettings) -> TracerProvider:
    # W3C trace context only: the fleet uses no baggage, and the composite default costs more.
    set_global_textmap(TraceContextTextMapPropagator())
    return TracerProvider(
        resource=Resource.create({"service.name": f"bev-{service}"}), sampler=_sampler(settings)
    )


def configure_tracing(service: str, settings: TelemetrySettings) -> None:
    provider = _tracer_provider(service, settings)
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
    """Give trace ids to library users (tests, CLI, benches) that did not configure tracing,
    set up exactly as a service with the default settings."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(_tracer_provider("client", TelemetrySettings()))


class active_span:
    """`with active_span(tracer, name, kind, parent) as span:` = `tracer.start_as_current_span(name,
    context=parent, kind=kind)`: the same span, parent, current context, exception event and error
    status, and the span ends on exit.

    Why: start_as_current_span stacks three generator context managers (the module-level
    ProxyTracer's, the SDK Tracer's and use_span's); on the RPC hot path (one span per call on
    each side) that wrapping cost about as much as creating the span. This class does the same
    steps with plain method calls.
    """

    __slots__ = ("_context", "_kind", "_name", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, name: str, kind: SpanKind, context: otel_context.Context | None = None
    ) -> None:
        self._tracer, self._name, self._kind, self._context = tracer, name, kind, context

    def __enter__(self) -> Span:
        span = self._span = self._tracer.start_span(self._name, context=self._context, kind=self._kind)
        # As use_span: the new span becomes current on top of the *current* context.
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self._span
        otel_context.detach(self._token)
        try:
            # As use_span: record Exceptions (not GeneratorExit, CancelledError...) and mark ERROR.
            if isinstance(exc, Exception) and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            span.end()


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics on a background thread; returns the bound port (port 0 = pick one)."""
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_port
    return bound


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
