"""Expression state machine: mapping, transition rules, signals and personality."""

from __future__ import annotations

import pytest

from services.avatar.expressions import (
    Emotion,
    ExpressionStateMachine,
    Personality,
    ResearchEvent,
    ResearchState,
)

S = ResearchState
HAPPY_PATH = [S.COLLECTING, S.ANALYZING, S.HYPOTHESIZING, S.DEBATING, S.REPORTING, S.IDLE]


def _walk(machine: ExpressionStateMachine, states: list[ResearchState]) -> None:
    for state in states:
        machine.transition(ResearchEvent(state))


def test_starts_idle_and_neutral() -> None:
    machine = ExpressionStateMachine()
    assert machine.state is S.IDLE
    assert machine.expression.emotion is Emotion.NEUTRAL


def test_happy_path_maps_each_state() -> None:
    machine = ExpressionStateMachine()
    emotions = [machine.transition(ResearchEvent(state)).emotion for state in HAPPY_PATH]
    assert emotions == [
        Emotion.CURIOUS,
        Emotion.FOCUSED,
        Emotion.THINKING,
        Emotion.THINKING,
        Emotion.SATISFIED,
        Emotion.NEUTRAL,
    ]
    assert machine.state is S.IDLE


def test_expression_fields_are_well_formed() -> None:
    machine = ExpressionStateMachine()
    expression = machine.transition(ResearchEvent(S.COLLECTING, progress=0.25))
    assert expression.state is S.COLLECTING
    assert expression.animation == "scan_sources"
    assert "25% done" in expression.narration
    assert 0.0 <= expression.intensity <= 1.0


@pytest.mark.parametrize(
    ("path", "forbidden"),
    [
        ([], S.REPORTING),  # idle -> reporting skips the whole investigation
        ([S.COLLECTING], S.DEBATING),
        ([S.COLLECTING, S.ANALYZING, S.HYPOTHESIZING, S.DEBATING, S.REPORTING], S.COLLECTING),
        ([S.COLLECTING, S.ERROR], S.ANALYZING),  # error only recovers through idle
    ],
)
def test_forbidden_transitions_raise_and_leave_state_unchanged(
    path: list[ResearchState], forbidden: ResearchState
) -> None:
    machine = ExpressionStateMachine()
    _walk(machine, path)
    before_state, before_expression = machine.state, machine.expression
    with pytest.raises(ValueError, match=rf"-> {forbidden.value} is not allowed"):
        machine.transition(ResearchEvent(forbidden))
    assert machine.state is before_state
    assert machine.expression == before_expression


@pytest.mark.parametrize("interrupt", [S.ALERT, S.ERROR, S.IDLE])
@pytest.mark.parametrize(
    "start", [S.IDLE, S.COLLECTING, S.ANALYZING, S.HYPOTHESIZING, S.DEBATING, S.REPORTING]
)
def test_any_state_may_be_interrupted(start: ResearchState, interrupt: ResearchState) -> None:
    machine = ExpressionStateMachine()
    _walk(machine, HAPPY_PATH[: HAPPY_PATH.index(start) + 1] if start is not S.IDLE else [])
    assert machine.state is start
    assert machine.transition(ResearchEvent(interrupt)).state is interrupt


def test_loops_and_resume_after_alert() -> None:
    machine = ExpressionStateMachine()
    _walk(machine, [S.COLLECTING, S.ANALYZING, S.COLLECTING, S.ANALYZING, S.HYPOTHESIZING, S.DEBATING])
    _walk(machine, [S.HYPOTHESIZING, S.DEBATING, S.DEBATING])  # revise after dissent; progress update
    machine.transition(ResearchEvent(S.ALERT, severity=0.9))
    assert S.DEBATING in machine.allowed_next()
    assert S.COLLECTING not in machine.allowed_next()
    assert machine.transition(ResearchEvent(S.DEBATING)).state is S.DEBATING


def test_signal_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="confidence"):
        ResearchEvent(S.ANALYZING, confidence=1.5)


def test_confidence_drives_emotion_and_intensity() -> None:
    def at(confidence: float) -> tuple[Emotion, float]:
        machine = ExpressionStateMachine()
        _walk(machine, [S.COLLECTING, S.ANALYZING])
        expression = machine.transition(ResearchEvent(S.HYPOTHESIZING, confidence=confidence))
        return expression.emotion, expression.intensity

    low, mid, high = at(0.1), at(0.6), at(0.95)
    assert (low[0], mid[0], high[0]) == (Emotion.CONCERNED, Emotion.THINKING, Emotion.EXCITED)
    assert low[1] < mid[1] < high[1]


def test_severity_drives_alert() -> None:
    machine = ExpressionStateMachine()
    minor = machine.transition(ResearchEvent(S.ALERT, severity=0.2))
    major = machine.transition(ResearchEvent(S.ALERT, severity=1.0))
    assert minor.emotion is Emotion.CONCERNED
    assert major.emotion is Emotion.ALARMED
    assert minor.intensity < major.intensity == 1.0


def test_low_confidence_report_is_concerned() -> None:
    machine = ExpressionStateMachine()
    _walk(machine, HAPPY_PATH[:4])
    assert machine.transition(ResearchEvent(S.REPORTING, confidence=0.2)).emotion is Emotion.CONCERNED


def test_personality_scales_intensity() -> None:
    def intensity(personality: str) -> float:
        machine = ExpressionStateMachine(personality)
        return machine.transition(ResearchEvent(S.COLLECTING)).intensity

    assert intensity("calm") < intensity("balanced") < intensity("enthusiastic")
    assert ExpressionStateMachine(Personality.CALM).personality is Personality.CALM
    with pytest.raises(ValueError, match="unknown personality"):
        ExpressionStateMachine("grumpy")


def test_deterministic() -> None:
    events = [
        ResearchEvent(S.COLLECTING, progress=0.5),
        ResearchEvent(S.ANALYZING, confidence=0.7),
        ResearchEvent(S.ALERT, severity=0.8),
        ResearchEvent(S.ANALYZING),
    ]
    runs = []
    for _ in range(2):
        machine = ExpressionStateMachine("enthusiastic")
        runs.append([machine.transition(event) for event in events])
    assert runs[0] == runs[1]
