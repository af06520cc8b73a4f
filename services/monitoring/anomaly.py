"""Online anomaly detection on live series: an EWMA of the level with a median-absolute-deviation band.

Per series key, each observation is compared with the EWMA level; the band is the level ± z robust
standard deviations, the deviation being 1.4826 x the MAD of the last `window` one-step residuals
(value - level before the update). Only the signal's bad direction alerts (latency up, tokens/s
down). Robustness, in the order a point meets it:

- NaN and ±inf are ignored (no value: a failed scrape, rate() over no requests);
- warm-up: the first `warmup` points only seed the level (their median) and the residuals;
- MAD floor (`min_scale`) and absolute floor (`min_delta`): a series flat at 0 for hours has a MAD
  of 0, so without floors 0 → 0.001 would be "infinitely" anomalous;
- persistence: an anomaly opens after `persistence` out-of-band points among the last `within`
  (consecutive by default: one outlier, a GC pause, is not an incident; "5 of 6" lets errors on a
  quiet route, where many scrapes see no request fail, still add up); a gap longer than
  `max_gap_s` starts the count again. With `rising`, a run opens only once the value is more than
  one robust deviation above the run's first one (a burst of jobs that is draining is not a
  backlog growing);
- the level learns with each residual clipped to the band (Huber-style), so an outlier moves it
  by at most alpha x the band, and not at all while an anomaly is open: a long incident stays
  detected instead of becoming the new normal;
- recovery: the anomaly closes after `recovery` consecutive in-band points; `observe` returns an
  event on opening and on closing, so incidents can be resolved;
- a step that stays (`max_open` points open: a deploy that made a route slower for good) is taken
  as the new level and the anomaly closes with reason "new_level";
- bounded memory: `window` residuals per key, and at most `max_keys` keys (least recently seen
  dropped).

Why this method: at scrape rates (one point per 15 s per series) pure Python costs nothing (see
bench/bench_anomaly.py for observations/s), every decision is explainable in the series' own units
(an alert says "p95 3.2 s, expected 0.4 s, band up to 0.7 s"), and it needs no training set and no
dependency. A median/MAD band is not pulled by the outliers it must ignore, unlike mean ± k sigma; the
EWMA follows daily cycles and slow drift that defeat static thresholds. River's HalfSpaceTrees
scores points in a fixed feature range and gives a score without an expected value or a band, and
would still need the warm-up, persistence, recovery and per-key bookkeeping around it.

Feeding it: one `Detector` per signal (SIGNALS has the tuned presets; `Signal` is a pydantic model,
so settings can carry overrides), one point per series per scrape, from queries over a short window
(two scrape intervals, e.g. `rate(...[30s])` at a 15 s scrape). A `[5m]` window smears a one-scrape
outlier over 20 points, which persistence then takes for an incident, and delays detection.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Direction = Literal["up", "down"]

_MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal noise
# The MAD (two sorts of the window) is most of the cost of a point; the window moves by 1/window per
# point, so recomputing it every few points changes the band little and costs a fraction.
_RESCALE_EVERY = 8


class Signal(BaseModel):
    """How one kind of series is judged."""

    model_config = ConfigDict(frozen=True)

    name: str
    direction: Direction  # the bad direction: only it alerts
    log: bool = False  # judge log(value + log_offset): changes relative to the level (latency, throughput)
    log_offset: float = 0.0
    alpha: float = Field(default=0.02, gt=0, le=1)  # EWMA weight of a new point
    window: int = Field(default=120, ge=8)  # residuals kept for the MAD
    warmup: int = Field(default=40, ge=4)  # points before the first possible alert
    z: float = Field(default=4.0, gt=0)  # band half-width, in robust standard deviations
    min_scale: float = Field(default=0.0, ge=0)  # floor on the robust deviation, in judged (log or linear) units
    min_delta: float = Field(default=0.0, ge=0)  # floor on |value - expected|, in the series' units
    persistence: int = Field(default=3, ge=1)  # out-of-band points among the last `within` to open an anomaly
    within: int | None = Field(default=None, ge=1)  # None: persistence consecutive points; more: sparse series
    recovery: int = Field(default=4, ge=1)  # consecutive in-band points to close it
    max_gap_s: float = 300.0  # a longer gap without values restarts the persistence count
    max_open: int = Field(default=240, ge=1)  # points open after which the value is taken as the new level
    rising: bool = False  # open only while the run is still growing (a backlog that drains is recovering)

    @model_validator(mode="after")
    def _persistence_fits(self) -> Signal:
        if self.within is not None and self.within < self.persistence:
            raise ValueError(f"within ({self.within}) must be at least persistence ({self.persistence})")
        return self


# Tuned on services/monitoring/tests/data/anomaly_series.json (see bench/README.md, bench_anomaly.py).
LATENCY = Signal(name="latency", direction="up", log=True, log_offset=0.001, min_scale=0.05, persistence=3)
ERROR_RATIO = Signal(name="error_ratio", direction="up", min_scale=0.005, min_delta=0.02, persistence=5,
                     within=6)
QUEUE_DEPTH = Signal(name="queue_depth", direction="up", log=True, log_offset=1.0, min_scale=0.1, min_delta=8.0,
                     persistence=8, rising=True)
TOKENS_PER_SECOND = Signal(name="tokens_per_second", direction="down", log=True, log_offset=1.0, min_scale=0.03,
                           persistence=3)
SIGNALS: dict[str, Signal] = {s.name: s for s in (LATENCY, ERROR_RATIO, QUEUE_DEPTH, TOKENS_PER_SECOND)}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """An anomaly opening (state "open") or closing (state "closed") on one series."""

    key: str
    signal: str
    state: Literal["open", "closed"]
    t: float  # the point that opened or closed it
    started_at: float  # the first out-of-band point of the run that opened it
    value: float
    expected: float
    band: tuple[float, float]  # (lower, upper), in the series' units
    score: float  # this point's deviation in robust standard deviations, > 0 in the bad direction
    direction: Direction
    peak_score: float  # the largest score while open
    reason: Literal["", "recovered", "new_level", "forgotten"] = ""  # why it closed


class _Series:
    __slots__ = ("calm", "first", "last_t", "level", "open", "open_points", "peak", "recent", "recent_out",
                 "residuals", "scale", "since_scale", "started_at", "warm")

    def __init__(self, signal: Signal) -> None:
        self.warm: list[float] | None = []  # judged values during warm-up; None after it
        self.level = 0.0
        self.residuals: deque[float] = deque(maxlen=signal.window)
        self.scale = 0.0
        self.since_scale = _RESCALE_EVERY  # residuals added since `scale` was computed
        self.recent: deque[float] = deque(maxlen=signal.recovery + signal.persistence)
        self.recent_out = 0  # bit i: the point i steps back was out of band (while closed)
        self.started_at = 0.0
        self.first = 0.0  # the judged value that started the run
        self.last_t = -math.inf
        self.open: Anomaly | None = None
        self.open_points = 0
        self.calm = 0  # consecutive in-band points while open
        self.peak = 0.0


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class Detector:
    """Judges the series of one signal, keyed by series (e.g. "latency:reasoning:Chat")."""

    def __init__(self, signal: Signal, max_keys: int = 10_000) -> None:
        self.signal = signal
        self.max_keys = max_keys
        self.evicted = 0  # series dropped by the max_keys bound
        self.evicted_open = 0  # of which with an anomaly open
        self._series: OrderedDict[str, _Series] = OrderedDict()
        self._up = signal.direction == "up"
        self._mask = (1 << (signal.within or signal.persistence)) - 1

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, key: str) -> bool:
        return key in self._series

    def open_anomalies(self) -> list[Anomaly]:
        """The opening event of every anomaly still open."""
        return [s.open for s in self._series.values() if s.open is not None]

    def forget(self, key: str) -> Anomaly | None:
        """Drops a series that is gone (its target left); returns the closing of its open anomaly, if any."""
        series = self._series.pop(key, None)
        if series is None or series.open is None:
            return None
        return _closed(series.open, series.open, series.peak, "forgotten")

    def _judged(self, value: float) -> float:
        if not self.signal.log:
            return value
        return math.log(max(value + self.signal.log_offset, 1e-12))

    def _value(self, judged: float) -> float:
        return math.exp(judged) - self.signal.log_offset if self.signal.log else judged

    def observe(self, key: str, t: float, value: float) -> Anomaly | None:
        """Takes one point; returns an Anomaly when one opens or closes on this series, else None."""
        if not math.isfinite(value):
            return None
        signal = self.signal
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(signal)
            if len(self._series) > self.max_keys:
                # The least recently seen series has stopped reporting; call forget() for targets
                # known to be gone, so their open anomalies close instead of being dropped here.
                _, dropped = self._series.popitem(last=False)
                self.evicted += 1
                self.evicted_open += dropped.open is not None
        else:
            self._series.move_to_end(key)
        x = self._judged(value)
        series.recent.append(x)
        warm = series.warm
        if warm is not None:
            warm.append(x)
            series.last_t = t
            if len(warm) >= signal.warmup:
                series.level = level = _median(sorted(warm))
                series.residuals.extend(v - level for v in warm)
                series.warm = None
            return None

        if t - series.last_t > signal.max_gap_s:
            series.recent_out = 0
        series.last_t = t
        if series.since_scale >= _RESCALE_EVERY:
            residuals = sorted(series.residuals)
            centre = _median(residuals)
            deviations = sorted([abs(r - centre) for r in residuals])
            series.scale = max(_MAD_TO_SIGMA * _median(deviations), signal.min_scale)
            series.since_scale = 0
        scale = series.scale
        level = series.level
        residual = x - level
        score = (residual if self._up else -residual) / scale
        limit = signal.z
        out = score > limit
        if out and signal.min_delta:
            expected = self._value(level)
            out = value - expected > signal.min_delta if self._up else expected - value > signal.min_delta

        opened = series.open
        if opened is not None:
            series.open_points += 1
            if out:
                series.calm = 0
                series.peak = max(series.peak, score)
                if series.open_points >= signal.max_open:
                    return self._new_level(series, t, value, score)
                return None
            series.calm += 1
            if series.calm < signal.recovery:
                return None
            series.open = None
            return _closed(opened, self._event(series, opened.key, t, value, score), series.peak, "recovered")

        # Closed: learn, with the residual clipped to the band so one outlier pulls the level little.
        bound = limit * scale
        clipped = bound if residual > bound else -bound if residual < -bound else residual
        series.level = level + signal.alpha * clipped
        series.residuals.append(clipped)
        series.since_scale += 1
        before = series.recent_out
        series.recent_out = recent = ((before << 1) | out) & self._mask
        if not out:
            return None
        if not before:
            series.started_at, series.first = t, x
        if recent.bit_count() < signal.persistence:
            return None
        if signal.rising and x - series.first <= scale:
            return None
        series.recent_out = 0
        series.open_points = 0
        series.calm = 0
        series.peak = score
        series.open = event = self._event(series, key, t, value, score)
        return event

    def _event(self, series: _Series, key: str, t: float, value: float, score: float) -> Anomaly:
        signal = self.signal
        bound = signal.z * series.scale
        expected = self._value(series.level)
        lower, upper = self._value(series.level - bound), self._value(series.level + bound)
        if signal.min_delta:
            lower, upper = min(lower, expected - signal.min_delta), max(upper, expected + signal.min_delta)
        return Anomaly(key=key, signal=signal.name, state="open", t=t, started_at=series.started_at, value=value,
                       expected=expected, band=(lower, upper), score=score, direction=signal.direction,
                       peak_score=score)

    def _new_level(self, series: _Series, t: float, value: float, score: float) -> Anomaly:
        opened = series.open
        assert opened is not None
        series.level = _median(sorted(series.recent))
        series.open = None
        series.recent_out = 0
        return _closed(opened, self._event(series, opened.key, t, value, score), series.peak, "new_level")


def _closed(opened: Anomaly, now: Anomaly, peak: float, reason: Literal["recovered", "new_level", "forgotten"]) -> Anomaly:
    """The closing of `opened`: its start, with the closing point's value, expectation, band and score."""
    return Anomaly(key=opened.key, signal=opened.signal, state="closed", t=now.t, started_at=opened.started_at,
                   value=now.value, expected=now.expected, band=now.band, score=now.score, direction=opened.direction,
                   peak_score=peak, reason=reason)
