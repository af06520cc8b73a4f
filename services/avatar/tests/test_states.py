"""The state machine on its own: investigation events (shaped as the swarm's schema says, checked
against services/swarm/events.schema.json) -> research states, emotions that fade, personalities,
and narrations that say only what their event says."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from services.avatar.narration import MAX_NARRATION, TEMPLATES, Personality, clip, narrate
from services.avatar.states import EMOTIONS, Event, Mind, ResearchState, react
from services.swarm.events import problems

INVESTIGATION = "5b0f3e8e-7c1d-4b7a-9a61-0e2f4c9d1a33"
HALF_LIFE_S = 30.0
IDLE_AFTER_S = 120.0

# A demo-world investigation, in the order the swarm emits it, with the state each event leaves.
STORY: list[tuple[str, dict[str, Any], ResearchState]] = [
    ("phase", {"phase": "ingestion", "progress": 0.05}, ResearchState.SCANNING),
    ("plan", {"agent": "leader", "playbook": "domain-name", "tasks": [
        {"collector": "dns", "target": "browser-update.example.com", "reason": "resolve the target"},
        {"collector": "whois", "target": "browser-update.example.com", "reason": "registration"}]},
     ResearchState.THINKING),
    ("tool_call", {"agent": "collector-1", "role": "collector", "tool": "collectors.Collect",
                   "args": {"collector": "dns", "target": "browser-update.example.com"}, "key": "k1"},
     ResearchState.SCANNING),
    ("tool_result", {"agent": "collector-1", "tool": "collectors.Collect", "key": "k1", "status": "ok", "ms": 41,
                     "items": 3}, ResearchState.SCANNING),
    ("evidence", {"evidence": "ev-4c1d", "kind": "observation", "uri": "dns://browser-update.example.com/A",
                  "collector": "dns"}, ResearchState.SCANNING),
    ("entity", {"type": "ipv4-addr", "value": "203.0.113.9", "evidence": "ev-4c1d"}, ResearchState.SCANNING),
    ("entity", {"type": "malware", "value": "Emotet", "evidence": "ev-9a2b"}, ResearchState.ALERT_DISCOVERY),
    ("phase", {"phase": "hypotheses", "progress": 0.4}, ResearchState.THINKING),
    ("hypothesis", {"agent": "analyst", "id": "H1", "statement": "cdn-updates.example.net serves Emotet.",
                    "confidence": 0.55, "supporting": ["ev-9a2b"]}, ResearchState.THINKING),
    ("hypothesis", {"agent": "skeptic", "id": "H2", "statement": "The host is a benign mirror.",
                    "confidence": 0.3, "supporting": ["ev-4c1d"]}, ResearchState.UNCERTAIN),
    ("mode_switch", {"agent": "leader", "from": "hierarchical", "to": "democratic",
                     "reason": "best confidence 0.55 below 0.60"}, ResearchState.UNCERTAIN),
    ("vote", {"agent": "analyst", "ranking": ["H1", "H2"]}, ResearchState.THINKING),
    ("consensus", {"rule": "borda", "winner": "H1", "scores": {"H1": 3.0, "H2": 1.0},
                   "rankings": {"analyst": ["H1", "H2"]}, "dissent": []}, ResearchState.FOCUSED_ANALYSIS),
    ("phase", {"phase": "correlation", "progress": 0.6}, ResearchState.FOCUSED_ANALYSIS),
    ("hypothesis", {"agent": "analyst", "id": "H1", "statement": "cdn-updates.example.net serves Emotet.",
                    "confidence": 0.85, "supporting": ["ev-9a2b", "ev-4c1d"], "correlated": 1},
     ResearchState.FOCUSED_ANALYSIS),
    ("budget", {"tokens": 50000, "max_tokens": 200000}, ResearchState.FOCUSED_ANALYSIS),
    ("budget", {"tokens": 172000, "max_tokens": 200000}, ResearchState.CONCERNED),
    ("warning", {"agent": "monitor", "warning": "prompt_injection", "evidence": "ev-77aa",
                 "message": "collected text reads like an instruction to an AI ('ignore previous instructions')"},
     ResearchState.CONCERNED),
    ("phase", {"phase": "synthesis", "progress": 0.9}, ResearchState.FOCUSED_ANALYSIS),
    ("done", {"status": "completed", "reason": "", "citation_integrity": 1.0}, ResearchState.CELEBRATION_SUCCESS),
]


def _event(ident: int, kind: str, data: Mapping[str, Any]) -> Event:
    payload = {"id": ident, "investigation_id": INVESTIGATION, "kind": kind, "at": "2026-12-01T10:00:00+00:00",
               "data": dict(data)}
    assert problems(payload) == [], (kind, problems(payload))  # the swarm's own schema accepts it
    return Event.from_json(json.dumps(payload))


def _mind(personality: Personality = Personality.ANALYST, now: float = 0.0) -> Mind:
    return Mind(INVESTIGATION, personality, half_life_s=HALF_LIFE_S, idle_after_s=IDLE_AFTER_S, now=now)


def test_an_investigation_moves_through_the_research_states() -> None:
    mind = _mind()
    assert mind.view(0).state is ResearchState.IDLE and mind.view(0).expression == "neutral"
    seen = []
    for ident, (kind, data, expected) in enumerate(STORY, start=1):
        changed = mind.on_event(_event(ident, kind, data), ident)
        view = mind.view(ident)
        seen.append((kind, view.state))
        assert view.state is expected, (ident, kind, view)
        if changed:
            assert view.cause_kind == kind and view.cause_id == str(ident) and view.seq == mind.seq
    assert ("entity", ResearchState.ALERT_DISCOVERY) in seen
    assert mind.view(len(STORY)).expression == "joy" and mind.view(len(STORY)).color == "#4fb35a"


@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("entity", {"type": "intrusion-set", "value": "PaleMoth", "evidence": "ev-1"}, ResearchState.ALERT_DISCOVERY),
    ("entity", {"type": "domain-name", "value": "example.com", "evidence": "ev-1"}, None),
    ("relation", {"source": "cdn-updates.example.net", "type": "indicates",
                  "target": "malware--0a1b2c3d-0000-4000-8000-000000000001", "evidence": "ev-2"},
     ResearchState.ALERT_DISCOVERY),
    ("relation", {"source": "campaign--0a1b2c3d-0000-4000-8000-000000000002", "type": "attributed-to",
                  "target": "PaleMoth", "evidence": "ev-2"}, ResearchState.ALERT_DISCOVERY),
    ("relation", {"source": "example.com", "type": "resolves-to", "target": "203.0.113.9", "evidence": "ev-2"}, None),
    ("relation", {"source": "a.example.com", "type": "indicates", "target": "b.example.com", "evidence": "ev-2"}, None),
    ("tool_result", {"agent": "c1", "tool": "collectors.Collect", "key": "k", "status": "error", "ms": 5,
                     "error": "timed out"}, ResearchState.CONCERNED),
    ("error", {"message": "DBOS workflow failed"}, ResearchState.ERROR),
    ("done", {"status": "failed", "reason": "the model answered nothing"}, ResearchState.ERROR),
    ("done", {"status": "budget_exhausted", "reason": "wall time 901 s over the budget of 900 s"},
     ResearchState.CONCERNED),
    ("done", {"status": "cancelled", "reason": "cancelled by the analyst"}, ResearchState.IDLE),
    ("consensus", {"rule": "borda", "winner": None, "scores": {}, "rankings": {}, "dissent": []},
     ResearchState.UNCERTAIN),
    ("phase", {"phase": "counterfactuals", "progress": 0.75}, ResearchState.THINKING),
])
def test_each_kind_of_event(kind: str, data: dict[str, Any], expected: ResearchState | None) -> None:
    reaction = react(_event(7, kind, data), set())
    assert (reaction.state if reaction else None) is expected


def test_a_relation_to_a_threat_named_earlier_is_an_alert() -> None:
    mind = _mind()
    relation = {"source": "cdn-updates.example.net", "type": "indicates", "target": "PaleMoth", "evidence": "ev-3"}
    assert not mind.on_event(_event(1, "relation", relation), 1)  # PaleMoth is nobody yet
    mind.on_event(_event(2, "entity", {"type": "intrusion-set", "value": "PaleMoth", "evidence": "ev-2"}), 2)
    mind.on_event(_event(3, "phase", {"phase": "hypotheses", "progress": 0.4}), 3)
    assert mind.on_event(_event(4, "relation", relation), 4)
    view = mind.view(4)
    assert view.state is ResearchState.ALERT_DISCOVERY
    assert view.narration == "cdn-updates.example.net indicates PaleMoth, per evidence ev-3."


def test_repeated_and_late_events_change_nothing() -> None:
    mind = _mind()
    assert mind.on_event(_event(5, "entity", {"type": "malware", "value": "Emotet", "evidence": "ev-1"}), 1)
    before = mind.view(1)
    assert not mind.on_event(_event(5, "entity", {"type": "malware", "value": "Emotet", "evidence": "ev-1"}), 2)
    assert not mind.on_event(_event(4, "phase", {"phase": "ingestion", "progress": 0.05}), 2)
    assert mind.view(1) == before


@pytest.mark.parametrize("payload", [
    b"not json", b"[1, 2]", b'{"id": "7", "investigation_id": "x", "kind": "phase", "data": {}}',
    b'{"id": 7, "investigation_id": "", "kind": "phase", "data": {}}',
    b'{"id": 7, "investigation_id": "x", "kind": "phase", "data": []}',
    b'{"id": true, "investigation_id": "x", "kind": "phase", "data": {}}',
])
def test_a_payload_that_is_not_an_event_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        Event.from_json(payload)


def test_emotions_fade_with_the_half_life_and_the_avatar_goes_idle() -> None:
    mind = _mind(now=100.0)
    mind.on_event(_event(1, "entity", {"type": "malware", "value": "Emotet", "evidence": "ev-1"}), 100.0)
    alarmed = mind.view(100.0)
    assert alarmed.expression == "alarm" and alarmed.intensity == 0.9 and alarmed.emotions["alarm"] == 0.9
    assert list(alarmed.emotions) == list(EMOTIONS)
    later = mind.view(100.0 + HALF_LIFE_S)
    assert later.emotions["alarm"] == pytest.approx(0.45, abs=0.001)
    assert later.emotions["focus"] == pytest.approx(alarmed.emotions["focus"] / 2, abs=0.001)
    assert later.state is ResearchState.ALERT_DISCOVERY and later.seq == alarmed.seq  # fading is no change
    faded = mind.view(100.0 + 3 * HALF_LIFE_S)
    assert faded.expression == "neutral" and faded.intensity < 0.15 and faded.state is ResearchState.ALERT_DISCOVERY

    assert not mind.settle(100.0 + IDLE_AFTER_S - 1)
    assert mind.settle(100.0 + IDLE_AFTER_S + 30)
    idle = mind.view(100.0 + IDLE_AFTER_S + 30)
    assert idle.state is ResearchState.IDLE and idle.seq == alarmed.seq + 1
    assert idle.updated_at == 100.0 + IDLE_AFTER_S + 30  # the moment the view is of
    assert (idle.cause_kind, idle.cause_id) == ("", "") and idle.narration == TEMPLATES["idle"][Personality.ANALYST]
    assert not mind.settle(100.0 + IDLE_AFTER_S + 60)  # once


def test_a_new_state_pushes_the_old_feelings_back() -> None:
    mind = _mind()
    mind.on_event(_event(1, "entity", {"type": "malware", "value": "Emotet", "evidence": "ev-1"}), 0)
    mind.on_event(_event(2, "hypothesis", {"agent": "skeptic", "id": "H2", "statement": "A benign mirror.",
                                           "confidence": 0.2, "supporting": []}), 5)
    view = mind.view(5)
    assert view.state is ResearchState.UNCERTAIN and view.expression == "doubt"
    assert 0 < view.emotions["alarm"] < view.emotions["doubt"]  # still there, fading, no longer dominant
    mind.on_event(_event(3, "done", {"status": "completed"}), 6)
    assert mind.view(6).expression == "joy" and mind.view(6).narration == "Investigation completed."


def test_personalities_tell_the_same_facts_in_their_own_words() -> None:
    event = _event(12, "entity", {"type": "malware", "value": "Emotet", "evidence": "ev-9a2b"})
    told = {}
    for personality in Personality:
        mind = _mind(personality)
        mind.on_event(event, 1)
        told[personality] = mind.view(1).narration
    assert told[Personality.ANALYST] == "Found malware Emotet in evidence ev-9a2b."
    assert len(set(told.values())) == 3
    assert all("Emotet" in text and "ev-9a2b" in text and "malware" in text for text in told.values())

    mind = _mind()
    mind.on_event(event, 1)
    seq = mind.seq
    assert mind.set_personality(Personality.RED_TEAMER) and mind.seq == seq + 1
    assert mind.view(2).narration == told[Personality.RED_TEAMER] and mind.view(2).cause_id == "12"
    assert not mind.set_personality(Personality.RED_TEAMER) and mind.seq == seq + 1


def _tokens(text: str) -> Iterator[str]:
    for token in text.split():
        stripped = token.strip(".,;:()!?'\"").removesuffix("'s")  # "worker-1's": the value, then style
        if stripped:
            yield stripped


def _facts(value: Any) -> set[str]:
    """Every token an event's data states: its strings' words, its numbers, its lists' lengths."""
    if isinstance(value, str):
        return set(_tokens(value)) | {value}
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int):
        return {str(value)}
    if isinstance(value, float):
        return {str(value), f"{value:.2f}".rstrip("0").rstrip(".")}
    if isinstance(value, list):
        return {str(len(value))}.union(*(_facts(item) for item in value))
    if isinstance(value, dict):
        return set().union(*(_facts(key) | _facts(item) for key, item in value.items()))
    return set()


@pytest.mark.parametrize("personality", list(Personality))
def test_a_narration_says_only_what_its_event_says(personality: Personality) -> None:
    """Every word of a narration is the template's own (style) or a value of the event behind it, and
    nothing of the events before it leaks in."""
    mind = _mind(personality)
    earlier: set[str] = set()
    for ident, (kind, data, _) in enumerate(STORY, start=1):
        if not mind.on_event(_event(ident, kind, data), ident):
            continue
        view = mind.view(ident)
        assert mind.reaction is not None
        template = TEMPLATES[mind.reaction.trigger][personality]
        style = set(_tokens(re.sub(r"\{\w+\}", " ", template)))
        facts = _facts(data) | {kind}
        unexplained = [t for t in _tokens(view.narration)
                       if t not in style and t not in facts
                       and not (t.endswith("…") and any(f.startswith(t[:-1]) for f in facts))]
        assert not unexplained, (kind, view.narration, unexplained)
        leaked = {t for t in earlier - facts - style if len(t) > 3 and any(c.isdigit() or c == "." for c in t)}
        assert not leaked & set(_tokens(view.narration)), (kind, view.narration)
        earlier |= _facts(data)
        assert len(view.narration) <= MAX_NARRATION


def test_long_values_are_cut_not_rewritten() -> None:
    statement = "The actor " + "rotates infrastructure across many hosting providers " * 5 + "to evade takedowns."
    clipped = clip(statement)
    assert len(clipped) <= 120 and clipped.endswith("…") and statement.startswith(clipped[:-1])
    assert clip("two\nlines\tand\x00a NUL") == "two lines and a NUL"
    text = narrate("warning", Personality.ANALYST, {"warning": "tool_error", "message": "collect failed."})
    assert text == "Warning tool_error: collect failed."  # the value's own full stop, not ".."


def test_templates_carry_style_not_facts() -> None:
    """A template's own words are plain words: no number, name of a thing, address or id can come from
    a template, so what the previous test lets through as style cannot be a fact."""
    for trigger, by_personality in TEMPLATES.items():
        assert set(by_personality) == set(Personality), trigger
        fields = {frozenset(re.findall(r"\{(\w+)\}", template)) for template in by_personality.values()}
        assert len(fields) == 1, trigger  # every personality tells the same facts
        for template in by_personality.values():
            for token in _tokens(re.sub(r"\{\w+\}", " ", template)):
                assert re.fullmatch(r"[A-Za-z]+(?:'[a-z]+)?", token), (trigger, token)
