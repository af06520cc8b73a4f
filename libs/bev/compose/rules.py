"""The generated part of the alert rules: each RPC method's p99 latency threshold, from its proto.

The hand-written rules in deploy/<prometheus node>/rules/ (alerts.yml, recording.yml) compare each
method's p99 with `bev:rpc_latency_p99_threshold_seconds{service, method}`; this module writes those
series as recording rules, one per method, so a deadline changed in a proto moves its alert with it.

A method's threshold is half its `(bev.common.v1.call).deadline_s`: a p99 there means the slowest
calls are close to timing out. Left out (no threshold series, so HighLatency never fires for them):
- server-streaming methods: their latency is the stream's lifetime (to the last message);
- methods whose threshold is not below the latency histogram's largest finite bucket (60 s): beyond
  it histogram_quantile cannot tell a slow p99 from a fast one. These are the generation and
  ingest calls (Chat, Generate, Analyze, Ingest, ImportStix) whose time grows with their input.
"""

from __future__ import annotations

from typing import Any

from bev.compose.yaml_out import GENERATED, dump_yaml
from bev.fleet import client_class
from bev.manifest import Manifest
from bev.telemetry import LATENCY_BUCKETS

LATENCY_THRESHOLDS_FILE = "rpc_latency_thresholds.yml"
THRESHOLD_METRIC = "bev:rpc_latency_p99_threshold_seconds"
DEADLINE_FRACTION = 0.5
# The largest finite bucket bound: the largest latency a quantile over the histogram can report.
LARGEST_FINITE_BUCKET_S = float(LATENCY_BUCKETS[-1])


def latency_thresholds(manifest: Manifest) -> list[tuple[str, str, float]]:
    """(service, method, threshold seconds) for every method HighLatency watches, manifest order."""
    thresholds = []
    for service in manifest.services:
        for method in client_class(service).SERVICE.methods.values():
            threshold = method.deadline_s * DEADLINE_FRACTION
            if method.server_streaming or threshold >= LARGEST_FINITE_BUCKET_S:
                continue
            thresholds.append((service, method.name, threshold))
    return thresholds


def render_latency_thresholds(manifest: Manifest) -> str:
    rules: list[dict[str, Any]] = [
        {
            "record": THRESHOLD_METRIC,
            "expr": f"vector({threshold:g})",
            "labels": {"service": service, "method": method},
        }
        for service, method, threshold in latency_thresholds(manifest)
    ]
    header = (
        GENERATED
        + "# and the protos (bev.compose.rules): each RPC method's p99 latency threshold, half the\n"
        "# deadline_s its proto declares, for HighLatency in alerts.yml. Streaming methods and those whose\n"
        f"# threshold would be >= {LARGEST_FINITE_BUCKET_S:g} s (the latency histogram's largest finite bucket) have none.\n"
    )
    return dump_yaml(header, {"groups": [{"name": "bev-rpc-latency-thresholds", "rules": rules}]})
