"""Event-level scoring of an anomaly detector against labelled series, shared by the test and the bench.

An incident is detected when an anomaly opens on its series within [start, end + grace]; time to
detect is from the incident's start to the first such opening. An anomaly that opens outside every
incident window of its series is a false positive. Each incident counts once however many anomalies
open inside it (a flapping alert does not raise precision), so

    precision = detected incidents / (detected incidents + false positives)
    recall    = detected incidents / incidents
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.monitoring.anomaly import Anomaly

GRACE_S = 300.0  # an alert up to 5 minutes after the labelled end still belongs to the incident
FORMAT = "bev-anomaly-series/1"


@dataclass(frozen=True, slots=True)
class Incident:
    key: str
    start: float
    end: float  # the last point of the incident, inclusive


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    key: str
    kind: str  # a signal name: latency, error_ratio, queue_depth, tokens_per_second
    t0: float
    step_s: float
    values: list[float | None]  # None: no value at that step (a failed scrape, NaN from rate())
    incidents: list[Incident]


def dump_series(series: Sequence[LabelledSeries], path: Path) -> None:
    # One series per line, so a regenerated file diffs by series.
    lines = [json.dumps({"key": s.key, "kind": s.kind, "t0": s.t0, "step_s": s.step_s, "values": s.values,
                         "incidents": [{"start": i.start, "end": i.end} for i in s.incidents]}, separators=(",", ":"))
             for s in series]
    body = ",\n".join(lines)
    data = f'{{"format":"{FORMAT}","series":[\n{body}\n]}}\n'.encode()
    # mtime=0: the same series give the same bytes, so regenerating shows no spurious diff.
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def load_series(path: Path) -> list[LabelledSeries]:
    raw = path.read_bytes()
    doc: dict[str, Any] = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    return [LabelledSeries(key=s["key"], kind=s["kind"], t0=s["t0"], step_s=s["step_s"], values=s["values"],
                           incidents=[Incident(s["key"], i["start"], i["end"]) for i in s["incidents"]])
            for s in doc["series"]]


class Observer(Protocol):
    def observe(self, key: str, t: float, value: float) -> Anomaly | None: ...


def replay(series: Sequence[LabelledSeries], observers: Mapping[str, Observer]) -> list[Anomaly]:
    """Feeds every series to the observer of its kind, interleaved in time as a scrape loop would;
    a missing value goes in as NaN, as Prometheus returns it. Returns every event, in order."""
    events: list[Anomaly] = []
    length = max(len(s.values) for s in series)
    nan = math.nan
    feeds = [(s.key, s.t0, s.step_s, s.values, observers[s.kind].observe) for s in series]
    for i in range(length):
        for key, t0, step_s, values, observe in feeds:
            if i < len(values):
                value = values[i]
                event = observe(key, t0 + i * step_s, nan if value is None else value)
                if event is not None:
                    events.append(event)
    return events


@dataclass(frozen=True, slots=True)
class Score:
    incidents: int
    detected: int
    false_positives: int
    alerts: int  # anomalies opened, in incidents or not
    precision: float
    recall: float
    ttd_median_s: float | None
    ttd_p90_s: float | None
    missed: tuple[Incident, ...]
    false_alerts: tuple[tuple[str, float], ...]  # (key, t) of each false positive

    def figures(self) -> dict[str, float | int | None]:
        return {"incidents": self.incidents, "detected": self.detected, "false_positives": self.false_positives,
                "alerts": self.alerts, "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "ttd_median_s": self.ttd_median_s, "ttd_p90_s": self.ttd_p90_s}


def _nearest_rank(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def score(incidents: Iterable[Incident], opened: Iterable[tuple[str, float]], grace_s: float = GRACE_S) -> Score:
    """Scores anomaly openings, (key, t) pairs, against labelled incidents."""
    by_key: dict[str, list[Incident]] = {}
    for incident in incidents:
        by_key.setdefault(incident.key, []).append(incident)
    first: dict[Incident, float] = {}
    false_alerts: list[tuple[str, float]] = []
    alerts = 0
    for key, t in opened:
        alerts += 1
        hit = next((i for i in by_key.get(key, ()) if i.start <= t <= i.end + grace_s), None)
        if hit is None:
            false_alerts.append((key, t))
        elif hit not in first or t < first[hit]:
            first[hit] = t
    total = sum(len(v) for v in by_key.values())
    detected = len(first)
    delays = sorted(t - i.start for i, t in first.items())
    return Score(
        incidents=total, detected=detected, false_positives=len(false_alerts), alerts=alerts,
        precision=detected / (detected + len(false_alerts)) if detected + len(false_alerts) else 1.0,
        recall=detected / total if total else 1.0,
        ttd_median_s=_nearest_rank(delays, 0.5), ttd_p90_s=_nearest_rank(delays, 0.9),
        missed=tuple(i for v in by_key.values() for i in v if i not in first),
        false_alerts=tuple(false_alerts),
    )
