"""Logs, metrics and traces, set up the same way in every process.

- Logs: structlog, one JSON object per line, with service, trace_id and span_id.
- Metrics: Prometheus, one /metrics endpoint per process; the RPC layer records
  per-method counts, latency, in-flight and errors as plain numbers (`rpc_method_stats`) that a
  collector turns into the usual families at scrape time, so a call pays no metric locks. Every process also exports its CPU and
  memory (prometheus_client's process collector), the free space of its data directory and,
  where NVML finds an NVIDIA GPU, each GPU's utilisation and memory (`register_process_collectors`).
  Caches count their hits and misses through `cache_stats`.
- Traces: OpenTelemetry. Spans are always created so trace ids reach logs and
  NATS headers/gRPC metadata; exporting them is opt-in (console or OTLP/HTTP). RPCs write and
  read the W3C `traceparent` header themselves (`inject_trace`, `extract_trace`) and, while
  nothing records spans, make their unrecorded spans without the SDK's general path (`rpc_span`).
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
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
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bev.settings import TelemetrySettings

# Request latency buckets, RPC and HTTP alike: sub-millisecond bus hops to minute-long streams.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_CLIENT_RETRIES = Counter(
    "bev_rpc_client_retries_total",
    "Idempotent calls sent a second time after an unavailable or silent instance, by the first attempt's code",
    ["service", "method", "code"],
)


class RpcMethodStats:
    """One (service, method, transport)'s RPC figures as plain numbers, updated by the event loop
    without locks and read by `_RpcCollector` at scrape time (from the metrics server's thread).

    Why not prometheus_client's Counter/Gauge/Histogram: each update takes the metric's lock, and a
    call made five of them (in-flight up and down, latency, requests, errors): a measurable part of
    an RPC's own CPU. A scrape copies each list and dict in one step (atomic under the GIL), and
    derives the histogram's count from its buckets, so `_count` always equals the `+Inf` bucket.
    """

    __slots__ = ("buckets", "codes", "created", "in_flight", "labels", "seconds")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.created = time.time()
        self.in_flight = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0
        self.codes: dict[str, tuple[int, float]] = {}  # status code name -> (calls, first seen)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, code: str, seconds: float) -> None:
        self.in_flight -= 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le is inclusive, as Prometheus's
        self.seconds += seconds
        counted = self.codes.get(code)
        self.codes[code] = (1, time.time()) if counted is None else (counted[0] + 1, counted[1])


class _RpcCollector(Collector):
    """bev_rpc_requests_total and bev_rpc_errors_total {service, method, transport, code},
    bev_rpc_latency_seconds and bev_rpc_in_flight {service, method, transport}: the names, labels,
    buckets and `_created` samples prometheus_client's own metrics gave them (dashboards, alert
    rules and the monitoring service query these). A method has samples once it has been called."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str, str], RpcMethodStats] = {}
        self._lock = threading.Lock()

    def method(self, service: str, method: str, transport: str) -> RpcMethodStats:
        key = (service, method, transport)
        stats = self._methods.get(key)
        if stats is None:
            with self._lock:
                stats = self._methods.setdefault(key, RpcMethodStats(key))
        return stats

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, errors, latency, in_flight = self._families()
        with self._lock:
            methods = list(self._methods.values())
        # `le` as prometheus_client's Histogram writes it
        bounds = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
        for stats in methods:
            labels = list(stats.labels)
            codes, counts, seconds = dict(stats.codes), list(stats.buckets), stats.seconds
            for code, (calls, created) in codes.items():
                requests.add_metric([*labels, code], calls, created=created)
                if code != "OK":
                    errors.add_metric([*labels, code], calls, created=created)
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric(labels, cumulative, seconds)
            # HistogramMetricFamily takes no created timestamp: add the sample prometheus_client's
            # Histogram exports, in its place after the buckets, count and sum.
            latency.samples.append(latency.samples[-1]._replace(name="bev_rpc_latency_seconds_created",
                                                                value=stats.created))  # the _sum's labels
            in_flight.add_metric(labels, stats.in_flight)
        yield requests
        yield errors
        yield latency
        yield in_flight

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        labels = ["service", "method", "transport"]
        return (
            CounterMetricFamily("bev_rpc_requests", "RPCs handled, by final status code", labels=[*labels, "code"]),
            CounterMetricFamily("bev_rpc_errors", "RPCs that ended with a non-OK status", labels=[*labels, "code"]),
            HistogramMetricFamily(
                "bev_rpc_latency_seconds",
                "Time from request received to response sent (streams: to the last message)", labels=labels),
            GaugeMetricFamily("bev_rpc_in_flight", "RPCs being handled now", labels=labels),
        )


_RPC = _RpcCollector()
REGISTRY.register(_RPC)


def rpc_method_stats(service: str, method: str, transport: str) -> RpcMethodStats:
    """The RPC figures of one method on one transport (one object per process: look it up once)."""
    return _RPC.method(service, method, transport)


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
    # httpx logs every request at INFO: monitoring's queries to Prometheus alone would be a line per
    # query every few seconds. Its warnings still show.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
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


# --- trace context on the RPC path ----------------------------------------------------------------

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# As opentelemetry's TraceContextTextMapPropagator reads it (tests/test_telemetry.py holds the two equal).
_TRACEPARENT_RE = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_MAX_TRACEPARENT = 512
_MAX_TRACESTATE = 512
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSAMPLED_RANDOM = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)


def inject_trace(headers: MutableMapping[str, str], span_context: SpanContext) -> None:
    """Write `span_context` into `headers` as W3C `traceparent` (and `tracestate` when it has one):
    what the global propagator's inject writes, without looking up the current context again."""
    if span_context == INVALID_SPAN_CONTEXT:
        return
    headers[TRACEPARENT] = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    if span_context.trace_state:
        headers[TRACESTATE] = span_context.trace_state.to_header()


def _traceparent(headers: Mapping[str, str]) -> tuple[int, int, int, TraceState | None] | None:
    """(trace id, span id, trace flags, tracestate) from W3C headers, by the propagator's rules."""
    header = headers.get(TRACEPARENT)
    if not header or len(header) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT_RE.search(header)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff" or (version == "00" and rest):
        return None
    state_header = headers.get(TRACESTATE)
    state = None if state_header is None or len(state_header) > _MAX_TRACESTATE else TraceState.from_header([state_header])
    return int(trace_id, 16), int(span_id, 16), int(flags, 16), state


def extract_trace(headers: Mapping[str, str]) -> SpanContext | None:
    """The caller's span context from W3C `traceparent`/`tracestate` in `headers` (lower-case
    keys), or None where there is none or it is malformed: TraceContextTextMapPropagator's rules."""
    parsed = _traceparent(headers)
    if parsed is None:
        return None
    trace_id, span_id, flags, state = parsed
    return SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=TraceFlags(flags),
                       trace_state=state)


class rpc_span:
    """The span of one RPC, current while the call runs: `rpc_span(tracer, name, SpanKind.CLIENT)`
    is a child of the current span; `rpc_span(tracer, name, SpanKind.SERVER, headers)` a child of
    the caller's `traceparent` in `headers` (a root span without one), as
    `tracer.start_as_current_span(name, context=extract(headers), kind=...)` would make them.

    Why: while the process's TracerProvider samples nothing (no exporter, the default), every span
    is a NonRecordingSpan with fresh ids; the SDK's start_span still runs its general path (parent
    lookup, sampler, tracer metrics) for it, a large part of the RPC layer's own CPU per call. Here
    that case builds the same span directly (same ids, flags and tracestate); any other provider
    goes through the tracer as before, so recorded spans are exactly the SDK's.
    """

    __slots__ = ("_headers", "_kind", "_name", "_recording", "_span", "_token", "_tracer")

    def __init__(self, tracer: trace.Tracer, name: str, kind: SpanKind, headers: Mapping[str, str] | None = None) -> None:
        self._tracer, self._name, self._kind, self._headers = tracer, name, kind, headers

    def __enter__(self) -> Span:
        provider = trace.get_tracer_provider()
        headers = self._headers
        if isinstance(provider, TracerProvider) and provider.sampler is ALWAYS_OFF:
            self._recording = False
            ids = provider.id_generator
            # The parent's trace id, whether it is random (trace flags bit 1) and its tracestate.
            parent: tuple[int, bool, TraceState | None] | None = None
            if headers is None:
                current = trace.get_current_span().get_span_context()
                if current.is_valid:
                    parent = current.trace_id, current.trace_flags.random_trace_id, current.trace_state
            else:
                remote = _traceparent(headers)  # no SpanContext for the remote parent: not needed here
                if remote is not None:
                    parent = remote[0], bool(remote[2] & TraceFlags.RANDOM_TRACE_ID), remote[3]
            trace_id, random_id, state = (
                (ids.generate_trace_id(), ids.is_trace_id_random(), None) if parent is None else parent)
            span: Span = NonRecordingSpan(SpanContext(
                trace_id, ids.generate_span_id(), is_remote=False,
                trace_flags=_UNSAMPLED_RANDOM if random_id else _UNSAMPLED, trace_state=state))
        else:
            self._recording = True
            parent_context = None
            if headers is not None:
                caller = extract_trace(headers)
                parent_context = (otel_context.Context() if caller is None
                                  else trace.set_span_in_context(NonRecordingSpan(caller), otel_context.Context()))
            span = self._tracer.start_span(self._name, context=parent_context, kind=self._kind)
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        otel_context.detach(self._token)
        if not self._recording:
            return  # a NonRecordingSpan records nothing and its end() does nothing
        span = self._span
        try:
            # As use_span: record Exceptions (not GeneratorExit, CancelledError...) and mark ERROR.
            if isinstance(exc, Exception) and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            span.end()


def start_metrics_server(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on a background thread; returns the bound port (port 0 = pick one)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound: int = server.server_port
    return bound


def multiprocess_registry() -> CollectorRegistry:
    """The registry for a process whose forked children record metrics too (the Celery worker's
    prefork pool): every process's counts, read from PROMETHEUS_MULTIPROC_DIR, which must have been
    set before prometheus_client was first imported, plus this process's CPU and memory (the
    children's are not included)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    ProcessCollector(registry=registry)
    return registry


# --- caches ---------------------------------------------------------------------------------------

class CacheStats:
    """One cache's hits and misses over the process's lifetime (see `cache_stats`)."""

    __slots__ = ("_lock", "hits", "misses", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # a scrape reads from the metrics server's thread

    def hit(self) -> None:
        with self._lock:
            self.hits += 1

    def miss(self) -> None:
        with self._lock:
            self.misses += 1

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.hits, self.misses


class _CacheCollector(Collector):
    """bev_cache_requests_total{cache,result} and bev_cache_hit_rate{cache}, read at scrape time."""

    def __init__(self) -> None:
        self._caches: dict[str, CacheStats] = {}
        self._lock = threading.Lock()

    def stats(self, name: str) -> CacheStats:
        with self._lock:
            return self._caches.setdefault(name, CacheStats(name))

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, rate = self._families()
        with self._lock:
            caches = list(self._caches.values())
        for cache in caches:
            hits, misses = cache.counts()
            requests.add_metric([cache.name, "hit"], hits)
            requests.add_metric([cache.name, "miss"], misses)
            if hits + misses:  # no requests yet: no rate (not 0, which would read as a cold cache)
                rate.add_metric([cache.name], hits / (hits + misses))
        yield requests
        yield rate

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (CounterMetricFamily("bev_cache_requests", "Cache lookups, by result (hit or miss)",
                                    labels=["cache", "result"]),
                GaugeMetricFamily("bev_cache_hit_rate",
                                  "Share of cache lookups that hit, over the process's lifetime (0..1)",
                                  labels=["cache"]))


_CACHES = _CacheCollector()
REGISTRY.register(_CACHES)


def cache_stats(name: str) -> CacheStats:
    """The hit and miss counters of the cache called `name` (one object per name and process:
    instances of one cache add up), exported as bev_cache_requests_total{cache,result} and
    bev_cache_hit_rate{cache}. A lookup calls `.hit()` or `.miss()`."""
    return _CACHES.stats(name)


# --- per-process collectors: disk, GPU ------------------------------------------------------------

class DiskCollector(Collector):
    """bev_disk_free_bytes{path} and bev_disk_total_bytes{path} of each path, at scrape time. A path
    that cannot be read (removed, unmounted) is left out of that scrape."""

    def __init__(self, paths: Iterable[Path] = ()) -> None:
        self._paths: list[Path] = []
        for path in paths:
            self.add(path)

    def add(self, path: Path) -> None:
        resolved = path.resolve()
        if resolved not in self._paths:
            self._paths = [*self._paths, resolved]  # replaced, never mutated: a scrape may be iterating

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        free, total = self._families()
        for path in self._paths:
            try:
                usage = shutil.disk_usage(path)
            except OSError:
                continue
            free.add_metric([str(path)], usage.free)
            total.add_metric([str(path)], usage.total)
        yield free
        yield total

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("bev_disk_free_bytes", "Bytes free to this process on the file system of a path",
                                  labels=["path"]),
                GaugeMetricFamily("bev_disk_total_bytes", "Size in bytes of the file system of a path",
                                  labels=["path"]))


class GpuCollector(Collector):
    """bev_gpu_utilization_ratio, bev_gpu_memory_used_bytes and bev_gpu_memory_total_bytes, each
    {gpu (NVML index), name}, read from NVML at scrape time.

    Registered only where NVML loads and finds at least one device (`register_gpu_collector`): on a
    machine without an NVIDIA GPU and driver (ORACLE1; the development machine and CI) these metrics
    are absent, not zero. A device NVML cannot read at a scrape is left out of it."""

    def __init__(self, devices: int) -> None:
        self._devices = devices

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        import pynvml

        utilization, used, total = self._families()
        for index in range(self._devices):
            handle = _nvml(pynvml.nvmlDeviceGetHandleByIndex, index)
            raw_name = None if handle is None else _nvml(pynvml.nvmlDeviceGetName, handle)
            if raw_name is None:
                continue
            labels = [str(index), raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)]
            # Each reading on its own: a MIG-partitioned GPU reports memory but no utilisation.
            memory = _nvml(pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                used.add_metric(labels, memory.used)
                total.add_metric(labels, memory.total)
            rates = _nvml(pynvml.nvmlDeviceGetUtilizationRates, handle)
            if rates is not None:
                utilization.add_metric(labels, rates.gpu / 100)
        yield utilization
        yield used
        yield total

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["gpu", "name"]
        return (GaugeMetricFamily("bev_gpu_utilization_ratio",
                                  "Share of the last sample period the GPU was busy running kernels (0..1)", labels=labels),
                GaugeMetricFamily("bev_gpu_memory_used_bytes", "GPU memory in use", labels=labels),
                GaugeMetricFamily("bev_gpu_memory_total_bytes", "GPU memory installed", labels=labels))


def _nvml(read: Callable[..., Any], *args: Any) -> Any:
    """`read(*args)`, an NVML reading, or None where the device cannot give it now."""
    import pynvml

    try:
        return read(*args)
    except pynvml.NVMLError:
        return None


def register_gpu_collector(registry: CollectorRegistry = REGISTRY) -> bool:
    """Register a GpuCollector when NVML initialises and counts at least one device; False (and
    nothing registered) otherwise: no driver, no library, no device."""
    import pynvml  # here, not at the top: 20 ms that processes and the CLI need not pay at import

    try:
        pynvml.nvmlInit()
        devices = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return False
    if devices < 1:
        pynvml.nvmlShutdown()
        return False
    registry.register(GpuCollector(devices))
    return True


_DISKS: weakref.WeakKeyDictionary[CollectorRegistry, DiskCollector] = weakref.WeakKeyDictionary()
_REGISTRATION = threading.Lock()


def register_process_collectors(data_dir: Path, registry: CollectorRegistry = REGISTRY) -> None:
    """What every process exports besides its own metrics: the free space of `data_dir` and, when
    NVML finds a GPU, its utilisation and memory (GpuCollector). Process CPU and memory come from
    prometheus_client's ProcessCollector, registered in the default registry by prometheus_client
    itself (and in `multiprocess_registry`'s). Once per registry; another data directory adds a path."""
    with _REGISTRATION:
        disk = _DISKS.get(registry)
        if disk is None:
            disk = _DISKS[registry] = DiskCollector()
            registry.register(disk)
            register_gpu_collector(registry)
        disk.add(data_dir)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
