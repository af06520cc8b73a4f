"""Research state -> avatar expression: an explicit, deterministic state machine.

The avatar mirrors an investigation's progress events, so the analyst can tell at a glance
whether agents are collecting, arguing or stuck. Rules:

* The normal path is idle -> collecting -> analyzing -> hypothesizing -> debating -> reporting -> idle.
* Loops an investigation really makes are allowed: analyzing/hypothesizing -> collecting (pivot for
  more evidence), debating -> hypothesizing (revise after dissent).
* Any state may go to alert, error or idle (interrupts and cancellation), and repeating the current
  state is a progress update.
* From alert the machine may return to the state the alert interrupted; from error only to idle
  (or to another alert/error).

Anything else raises ``ValueError`` and leaves the machine unchanged, which catches events
arriving out of order. The same events always produce the same expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ResearchState(StrEnum):
    """Where an investigation stands (mirrors ``bev.avatar.v1.ResearchState``)."""

    IDLE = "idle"
    COLLECTING = "collecting"
    ANALYZING = "analyzing"
    HYPOTHESIZING = "hypothesizing"
    DEBATING = "debating"
    REPORTING = "reporting"
    ALERT = "alert"
    ERROR = "error"


class Emotion(StrEnum):
    NEUTRAL = "neutral"
    CURIOUS = "curious"
    FOCUSED = "focused"
    THINKING = "thinking"
    EXCITED = "excited"
    CONCERNED = "concerned"
    ALARMED = "alarmed"
    SATISFIED = "satisfied"


class Personality(StrEnum):
    """How strongly the avatar emotes; see ``PERSONALITY_SCALE``."""

    CALM = "calm"
    BALANCED = "balanced"
    ENTHUSIASTIC = "enthusiastic"


PERSONALITY_SCALE: dict[Personality, float] = {
    Personality.CALM: 0.6,
    Personality.BALANCED: 1.0,
    Personality.ENTHUSIASTIC: 1.4,
}


@dataclass(frozen=True)
class Expression:
    """What the avatar shows and says; ``intensity`` is in 0..1."""

    state: ResearchState
    emotion: Emotion
    intensity: float
    animation: str
    narration: str


@dataclass(frozen=True)
class ResearchEvent:
    """A progress event: the new state plus optional signals, each in 0..1 when given."""

    state: ResearchState
    confidence: float | None = None
    severity: float | None = None
    progress: float | None = None

    def __post_init__(self) -> None:
        for field_name in ("confidence", "severity", "progress"):
            value = getattr(self, field_name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{field_name} must be within 0..1, got {value}")


_INTERRUPTS = frozenset({ResearchState.ALERT, ResearchState.ERROR, ResearchState.IDLE})

# Forward moves beyond the universal ones (interrupts and repeating the current state).
ALLOWED_TRANSITIONS: dict[ResearchState, frozenset[ResearchState]] = {
    ResearchState.IDLE: frozenset({ResearchState.COLLECTING}),
    ResearchState.COLLECTING: frozenset({ResearchState.ANALYZING}),
    ResearchState.ANALYZING: frozenset({ResearchState.HYPOTHESIZING, ResearchState.COLLECTING}),
    ResearchState.HYPOTHESIZING: frozenset({ResearchState.DEBATING, ResearchState.COLLECTING}),
    ResearchState.DEBATING: frozenset({ResearchState.REPORTING, ResearchState.HYPOTHESIZING}),
    ResearchState.REPORTING: frozenset(),
    ResearchState.ALERT: frozenset(),  # plus the interrupted state, tracked at run time
    ResearchState.ERROR: frozenset(),
}


@dataclass(frozen=True)
class _Baseline:
    emotion: Emotion
    intensity: float
    animation: str
    narration: str


_BASELINES: dict[ResearchState, _Baseline] = {
    ResearchState.IDLE: _Baseline(Emotion.NEUTRAL, 0.2, "idle_breathe", "Ready for the next investigation."),
    ResearchState.COLLECTING: _Baseline(Emotion.CURIOUS, 0.5, "scan_sources", "Gathering evidence"),
    ResearchState.ANALYZING: _Baseline(Emotion.FOCUSED, 0.55, "examine_evidence", "Analysing the evidence"),
    ResearchState.HYPOTHESIZING: _Baseline(Emotion.THINKING, 0.5, "ponder", "Forming hypotheses"),
    ResearchState.DEBATING: _Baseline(
        Emotion.THINKING, 0.6, "debate", "The agents are weighing the evidence"
    ),
    ResearchState.REPORTING: _Baseline(Emotion.SATISFIED, 0.6, "present_report", "Writing the report"),
    ResearchState.ALERT: _Baseline(Emotion.ALARMED, 0.7, "alert_flash", "Alert"),
    ResearchState.ERROR: _Baseline(Emotion.CONCERNED, 0.6, "error_shake", "Something went wrong"),
}

HIGH_CONFIDENCE = 0.8
LOW_CONFIDENCE = 0.4
HIGH_SEVERITY = 0.5


class ExpressionStateMachine:
    """One avatar's state for one session; not thread-safe (one session is one event stream)."""

    def __init__(self, personality: Personality | str = Personality.BALANCED) -> None:
        try:
            self._personality = Personality(personality)
        except ValueError:
            known = ", ".join(p.value for p in Personality)
            raise ValueError(f"unknown personality {personality!r}; expected one of: {known}") from None
        self._state = ResearchState.IDLE
        self._interrupted: ResearchState | None = None
        self._expression = self._express(ResearchEvent(ResearchState.IDLE))

    @property
    def state(self) -> ResearchState:
        return self._state

    @property
    def personality(self) -> Personality:
        return self._personality

    @property
    def expression(self) -> Expression:
        """The expression after the last accepted event (idle/neutral at start)."""
        return self._expression

    def allowed_next(self) -> frozenset[ResearchState]:
        """States the next event may move to from the current one."""
        allowed = set(ALLOWED_TRANSITIONS[self._state]) | _INTERRUPTS | {self._state}
        if self._state is ResearchState.ALERT and self._interrupted is not None:
            allowed.add(self._interrupted)
        return frozenset(allowed)

    def transition(self, event: ResearchEvent) -> Expression:
        """Apply ``event``; raises ``ValueError`` (state unchanged) when the move is not allowed."""
        target = ResearchState(event.state)
        if target not in self.allowed_next():
            allowed = ", ".join(sorted(state.value for state in self.allowed_next()))
            raise ValueError(
                f"transition {self._state.value} -> {target.value} is not allowed; "
                f"from {self._state.value} the next state may be: {allowed}"
            )
        if target is ResearchState.ALERT and self._state is not ResearchState.ALERT:
            self._interrupted = self._state if self._state not in _INTERRUPTS else None
        elif target is not ResearchState.ALERT:
            self._interrupted = None
        self._state = target
        self._expression = self._express(event)
        return self._expression

    def _express(self, event: ResearchEvent) -> Expression:
        base = _BASELINES[event.state]
        emotion, intensity, narration = base.emotion, base.intensity, base.narration

        if event.state is ResearchState.ALERT:
            severity = 0.5 if event.severity is None else event.severity
            emotion = Emotion.ALARMED if severity >= HIGH_SEVERITY else Emotion.CONCERNED
            intensity = 0.4 + 0.6 * severity
            narration = f"{'Alert' if severity >= HIGH_SEVERITY else 'Heads-up'}: severity {severity:.0%}"
        elif event.state is ResearchState.ERROR and event.severity is not None:
            intensity = 0.4 + 0.5 * event.severity
        elif event.confidence is not None:
            confidence = event.confidence
            intensity += 0.4 * (confidence - 0.5)
            if event.state is ResearchState.REPORTING and confidence < LOW_CONFIDENCE:
                emotion, narration = Emotion.CONCERNED, "Writing the report; the findings are uncertain"
            elif event.state in (
                ResearchState.HYPOTHESIZING,
                ResearchState.DEBATING,
                ResearchState.ANALYZING,
            ):
                if confidence >= HIGH_CONFIDENCE:
                    emotion, narration = Emotion.EXCITED, f"{base.narration}: a strong lead is emerging"
                elif confidence < LOW_CONFIDENCE:
                    emotion, narration = Emotion.CONCERNED, f"{base.narration}: the evidence is thin so far"
            narration = f"{narration} (confidence {confidence:.0%})"
        if event.progress is not None and event.state not in _INTERRUPTS:
            narration = f"{narration}, {event.progress:.0%} done"
        if not narration.endswith("."):
            narration += "."

        scaled = intensity * PERSONALITY_SCALE[self._personality]
        return Expression(
            state=event.state,
            emotion=emotion,
            intensity=round(min(1.0, max(0.0, scaled)), 3),
            animation=base.animation,
            narration=narration,
        )
