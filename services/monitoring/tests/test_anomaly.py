"""The anomaly detector: precision and recall on the committed labelled series, and its robustness
rules one by one (warm-up, outliers, flat series, long incidents, direction, NaN, memory bounds)."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from services.monitoring.anomaly import (
    ERROR_RATIO,
    LATENCY,
    QUEUE_DEPTH,
    SIGNALS,
    TOKENS_PER_SECOND,
    Anomaly,
    Detector,
    Signal,
)
from services.monitoring.scoring import GRACE_S, Incident, load_series, replay, score
from services.monitoring.tests.synthetic_series import DATA, generate

STEP = 15.0


def feed(detector: Detector, values: list[float], key: str = "s", t0: float = 0.0) -> list[Anomaly]:
    """Observes `values` a step apart; returns the events."""
    events = []
    for i, value in enumerate(values):
        event = detector.observe(key, t0 + i * STEP, value)
        if event is not None:
            events.append(event)
    return events


def noisy(rng: random.Random, level: float, n: int, cv: float = 0.1) -> list[float]:
    return [level * math.exp(rng.gauss(0, cv)) for _ in range(n)]


def test_committed_series_precision_and_recall_at_least_0_9() -> None:
    series = load_series(DATA)
    events = replay(series, {kind: Detector(signal) for kind, signal in SIGNALS.items()})
    opened = [(e.key, e.t) for e in events if e.state == "open"]
    incidents = [i for s in series for i in s.incidents]
    overall = score(incidents, opened)
    print(f"\nall: {overall.figures()}")
    for kind in SIGNALS:
        keys = {s.key for s in series if s.kind == kind}
        print(f"{kind}: {score([i for i in incidents if i.key in keys], [o for o in opened if o[0] in keys]).figures()}")
    assert overall.incidents >= 60
    assert overall.precision >= 0.9, overall.false_alerts
    assert overall.recall >= 0.9, overall.missed
    # Every opening is closed again by the end of the day: no incident stays open forever.
    assert sum(e.state == "open" for e in events) == sum(e.state == "closed" for e in events)


def test_committed_series_are_what_the_generator_writes() -> None:
    committed = load_series(DATA)
    generated = generate()
    assert [s.key for s in committed] == [s.key for s in generated]
    for a, b in zip(committed, generated, strict=True):
        assert a.values == b.values and a.incidents == b.incidents, a.key


def test_no_alert_during_warm_up() -> None:
    detector = Detector(LATENCY)
    rng = random.Random(1)
    wild = [rng.choice([0.1, 5.0, 0.01, 30.0]) for _ in range(LATENCY.warmup)]
    assert feed(detector, wild) == []


def test_single_outliers_are_not_incidents_but_a_run_is() -> None:
    rng = random.Random(2)
    detector = Detector(LATENCY)
    values = noisy(rng, 0.2, 200)
    values[100] = 2.0  # a GC pause
    values[150] = values[151] = 1.5  # two slow scrapes
    assert feed(detector, values) == []
    run = feed(detector, [2.0, 2.0, 2.0], t0=200 * STEP)
    assert [e.state for e in run] == ["open"]
    event = run[0]
    assert event.t == 202 * STEP and event.started_at == 200 * STEP  # raised on the third point
    assert event.direction == "up" and event.score > LATENCY.z
    assert 0.15 < event.expected < 0.27 and event.band[1] < 2.0


def test_a_series_flat_at_zero_needs_the_absolute_floor() -> None:
    detector = Detector(ERROR_RATIO)
    assert feed(detector, [0.0] * 2000) == []
    assert feed(detector, [0.001] * 30, t0=2000 * STEP) == []  # 0 -> 0.1 %: not an incident
    events = feed(detector, [0.2] * 10, t0=2030 * STEP)
    assert [e.state for e in events] == ["open"]
    assert events[0].expected < 0.005  # the 0.1 % and the run's first points moved it a little
    assert events[0].band[1] >= ERROR_RATIO.min_delta


def test_a_long_incident_stays_open_then_closes() -> None:
    rng = random.Random(3)
    detector = Detector(LATENCY)
    assert feed(detector, noisy(rng, 0.1, 300)) == []
    # 50 minutes at 10x: the level must not learn it, so no closing until it ends.
    during = feed(detector, noisy(rng, 1.0, 200), t0=300 * STEP)
    assert [e.state for e in during] == ["open"]
    assert [a.key for a in detector.open_anomalies()] == ["s"]
    after = feed(detector, noisy(rng, 0.1, 20), t0=500 * STEP)
    assert [(e.state, e.reason) for e in after] == [("closed", "recovered")]
    closed = after[0]
    assert closed.t == (500 + LATENCY.recovery - 1) * STEP
    assert closed.started_at == during[0].started_at
    assert closed.peak_score >= during[0].score
    assert closed.expected == pytest.approx(0.1, rel=0.2)  # still the level from before the incident
    assert detector.open_anomalies() == []


def test_a_step_that_stays_becomes_the_new_level() -> None:
    rng = random.Random(4)
    signal = LATENCY.model_copy(update={"max_open": 40})
    detector = Detector(signal)
    feed(detector, noisy(rng, 0.1, 200))
    events = feed(detector, noisy(rng, 0.5, 200), t0=200 * STEP)
    assert [(e.state, e.reason) for e in events] == [("open", ""), ("closed", "new_level")]
    assert events[1].expected == pytest.approx(0.5, rel=0.3)


def test_down_only_signal_alerts_on_a_drop_not_a_rise() -> None:
    rng = random.Random(5)
    detector = Detector(TOKENS_PER_SECOND)
    feed(detector, noisy(rng, 100.0, 200, cv=0.05))
    assert feed(detector, noisy(rng, 300.0, 20, cv=0.05), t0=200 * STEP) == []
    feed(detector, noisy(rng, 100.0, 40, cv=0.05), t0=220 * STEP)
    events = feed(detector, noisy(rng, 20.0, 10, cv=0.05), t0=260 * STEP)
    assert [e.state for e in events] == ["open"]
    assert events[0].direction == "down" and events[0].score > TOKENS_PER_SECOND.z
    assert events[0].value < events[0].band[0] < events[0].expected


def test_nan_and_inf_are_ignored() -> None:
    detector = Detector(LATENCY)
    assert detector.observe("gone", 0.0, math.nan) is None
    assert len(detector) == 0  # a NaN does not create a series
    rng = random.Random(6)
    values = noisy(rng, 0.2, 100)
    for i in range(0, 100, 7):
        values[i] = math.nan
    values[50] = math.inf
    assert feed(detector, values) == []
    # A failed scrape inside a run neither breaks it nor counts towards it.
    events = feed(detector, [3.0, math.nan, 3.0, math.nan, 3.0], t0=100 * STEP)
    assert [(e.state, e.t) for e in events] == [("open", 104 * STEP)]


def test_a_long_gap_restarts_the_persistence_count() -> None:
    rng = random.Random(7)
    detector = Detector(LATENCY)
    feed(detector, noisy(rng, 0.2, 100))
    assert feed(detector, [3.0, 3.0], t0=100 * STEP) == []
    # The target was down for 10 minutes: the next slow scrape starts a new run.
    later = 102 * STEP + 600
    assert detector.observe("s", later, 3.0) is None
    assert detector.observe("s", later + STEP, 3.0) is None
    assert detector.observe("s", later + 2 * STEP, 3.0) is not None


def test_sparse_errors_add_up_within_the_window() -> None:
    detector = Detector(ERROR_RATIO)  # 5 of the last 6
    feed(detector, [0.0] * 100)
    # A quiet route during an incident: some scrapes see no failed request.
    events = feed(detector, [0.25, 0.0, 0.33, 0.5, 0.25, 0.2], t0=100 * STEP)
    assert [(e.state, e.t) for e in events] == [("open", 105 * STEP)]
    consecutive = Detector(ERROR_RATIO.model_copy(update={"within": None}))
    feed(consecutive, [0.0] * 100)
    assert feed(consecutive, [0.25, 0.0, 0.33, 0.5, 0.25, 0.2], t0=100 * STEP) == []


def test_a_draining_burst_is_not_a_backlog_but_a_growing_one_is() -> None:
    detector = Detector(QUEUE_DEPTH)
    rng = random.Random(8)
    feed(detector, [float(rng.choice([0, 0, 0, 1, 2])) for _ in range(200)])
    burst = [15.0, 16.0, 15.0, 14.0, 14.0, 13.0, 12.0, 12.0, 11.0, 10.0, 8.0, 5.0, 2.0, 0.0]
    assert feed(detector, burst, t0=200 * STEP) == []
    feed(detector, [0.0] * 40, t0=214 * STEP)
    ramp = [float(i) for i in range(40)]
    events = feed(detector, ramp, t0=254 * STEP)
    assert [e.state for e in events] == ["open"]


def test_keys_are_bounded_least_recently_seen_first() -> None:
    detector = Detector(LATENCY, max_keys=3)
    for i, key in enumerate(["a", "b", "c", "a", "d", "e"]):
        detector.observe(key, i * STEP, 0.1)
    assert len(detector) == 3 and detector.evicted == 2
    # "b" and "c" were the least recently seen: "a" was seen again before "d" came.
    assert [key in detector for key in "abcde"] == [True, False, False, True, True]


def test_forget_closes_an_open_anomaly() -> None:
    detector = Detector(LATENCY)
    feed(detector, [0.1] * 100)
    opened = feed(detector, [1.0] * 3, t0=100 * STEP)
    assert [e.state for e in opened] == ["open"]
    closed = detector.forget("s")
    assert closed is not None and closed.state == "closed" and closed.reason == "forgotten"
    assert detector.open_anomalies() == [] and len(detector) == 0


def test_signal_rejects_a_window_shorter_than_persistence() -> None:
    with pytest.raises(ValidationError):
        Signal(name="x", direction="up", persistence=5, within=3)


def test_score_counts_incidents_once_and_alerts_outside_windows_as_false() -> None:
    incidents = [Incident("a", 1000.0, 1300.0), Incident("a", 5000.0, 5100.0), Incident("b", 2000.0, 2600.0)]
    opened = [
        ("a", 1030.0), ("a", 1200.0),  # one incident, two openings (a flap): detected once
        ("a", 5100.0 + GRACE_S),  # at the edge of the grace period: still this incident
        ("a", 3000.0),  # outside every window: a false positive
        ("b", 1990.0),  # before b's incident started: a false positive
    ]
    result = score(incidents, opened)
    assert (result.detected, result.false_positives, result.alerts) == (2, 2, 5)
    assert result.recall == pytest.approx(2 / 3) and result.precision == pytest.approx(2 / 4)
    assert result.missed == (Incident("b", 2000.0, 2600.0),)
    assert result.ttd_median_s == 30.0 and result.ttd_p90_s == 5100.0 + GRACE_S - 5000.0
