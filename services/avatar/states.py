"""Investigation events -> the avatar's research state, emotions and narration.

The states are the BEV design's. Each event the swarm publishes (services/swarm/events.schema.json)
either moves the avatar (a `Reaction`: a state, the template that narrates it, the event's fields to
fill it with, and how strongly it is felt) or leaves it as it is (a successful tool result, an
entity that is no threat, a heartbeat):

* scanning: the ingestion phase, tool calls, new evidence;
* thinking / focused_analysis: the hypotheses and counterfactual phases (thinking), correlation and
  synthesis (focused), hypotheses by their confidence, votes, a consensus;
* alert_discovery: a threat found: an entity of a threat type, or a relation such as indicates, uses
  or attributed-to that touches one (a threat's STIX id, or a threat this investigation named);
* uncertain: a hypothesis below LOW_CONFIDENCE, no consensus, the switch to a vote (hybrid mode
  switches when the leader's hypotheses are too weak or too close to call);
* concerned: a warning, a failed tool call, model tokens past BUDGET_NEAR of the budget, a stop on
  budget;
* error: an error event, or `done` with status failed;
* celebration_success: `done` with status completed;
* idle: no reaction for `idle_after_s`, a cancelled investigation, or none yet.

Emotions (curiosity, focus, alarm, joy, doubt, worry, distress, each 0..1) rise to the new state's
profile scaled by the reaction's strength, the others are pushed back (DISPLACE), and all fade with a
half-life; the fading is computed from timestamps when the state is read, so nothing runs between
events. The expression is the dominant emotion ("neutral" when all are below EXPRESSIVE), the
intensity its value.

Everything here is deterministic in the events and the times it is given: the same events at the
same times give the same states.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.avatar.narration import Personality, clip, fields_of, narrate


class ResearchState(StrEnum):
    """Mirrors ``bev.avatar.v1.ResearchState``."""

    IDLE = "idle"
    SCANNING = "scanning"
    FOCUSED_ANALYSIS = "focused_analysis"
    ALERT_DISCOVERY = "alert_discovery"
    CELEBRATION_SUCCESS = "celebration_success"
    THINKING = "thinking"
    UNCERTAIN = "uncertain"
    CONCERNED = "concerned"
    ERROR = "error"


EMOTIONS = ("curiosity", "focus", "alarm", "joy", "doubt", "worry", "distress")
EXPRESSIVE = 0.15  # below this every emotion reads as a neutral face
DISPLACE = 0.5     # share of the other emotions a reaction at full strength takes away

# What each state makes the avatar feel at full strength.
PROFILES: dict[ResearchState, dict[str, float]] = {
    ResearchState.IDLE: {},
    ResearchState.SCANNING: {"curiosity": 0.7, "focus": 0.25},
    ResearchState.FOCUSED_ANALYSIS: {"focus": 0.8, "curiosity": 0.3},
    ResearchState.THINKING: {"focus": 0.5, "curiosity": 0.4, "doubt": 0.2},
    ResearchState.ALERT_DISCOVERY: {"alarm": 0.9, "focus": 0.45, "worry": 0.35},
    ResearchState.UNCERTAIN: {"doubt": 0.75, "worry": 0.25, "focus": 0.2},
    ResearchState.CONCERNED: {"worry": 0.75, "alarm": 0.2, "doubt": 0.15},
    ResearchState.ERROR: {"distress": 0.85, "worry": 0.45},
    ResearchState.CELEBRATION_SUCCESS: {"joy": 0.95, "curiosity": 0.2},
}
COLORS: dict[ResearchState, str] = {
    ResearchState.IDLE: "#8a94a6",
    ResearchState.SCANNING: "#3d8bd9",
    ResearchState.FOCUSED_ANALYSIS: "#2bb3a3",
    ResearchState.THINKING: "#8e6bd9",
    ResearchState.ALERT_DISCOVERY: "#d94f3d",
    ResearchState.UNCERTAIN: "#d9a23d",
    ResearchState.CONCERNED: "#d97a3d",
    ResearchState.ERROR: "#b3263d",
    ResearchState.CELEBRATION_SUCCESS: "#4fb35a",
}
# Where the eyes look (x right, y up); scanning sweeps across SCAN_SWEEP with each event.
GAZES: dict[ResearchState, tuple[float, float]] = {
    ResearchState.IDLE: (0.0, 0.0),
    ResearchState.SCANNING: (0.0, 0.1),
    ResearchState.FOCUSED_ANALYSIS: (0.0, -0.25),
    ResearchState.THINKING: (-0.35, 0.45),
    ResearchState.ALERT_DISCOVERY: (0.0, 0.0),
    ResearchState.UNCERTAIN: (0.4, 0.25),
    ResearchState.CONCERNED: (0.0, -0.3),
    ResearchState.ERROR: (0.0, -0.45),
    ResearchState.CELEBRATION_SUCCESS: (0.0, 0.2),
}
SCAN_SWEEP = (-0.6, -0.2, 0.2, 0.6)

THREAT_TYPES = frozenset({"malware", "intrusion-set", "threat-actor", "attack-pattern", "campaign"})
THREAT_RELATIONS = frozenset({"indicates", "uses", "attributed-to", "targets", "delivers", "drops",
                              "communicates-with", "controls", "exploits", "variant-of", "authored-by"})
LOW_CONFIDENCE = 0.4     # a hypothesis below it makes the avatar uncertain
STRONG_CONFIDENCE = 0.7  # at or above it, focused; between the two, thinking
BUDGET_NEAR = 0.8        # model tokens spent past this share of the budget: concerned
MAX_THREATS = 500        # threat names remembered per investigation (to recognise relations to them)

_PHASE_STATES = {
    "ingestion": ResearchState.SCANNING,
    "hypotheses": ResearchState.THINKING,
    "correlation": ResearchState.FOCUSED_ANALYSIS,
    "counterfactuals": ResearchState.THINKING,
    "synthesis": ResearchState.FOCUSED_ANALYSIS,
}
_DONE = {
    "completed": (ResearchState.CELEBRATION_SUCCESS, 1.0),
    "failed": (ResearchState.ERROR, 1.0),
    "budget_exhausted": (ResearchState.CONCERNED, 0.9),
    "cancelled": (ResearchState.IDLE, 0.0),
}


@dataclass(frozen=True)
class Event:
    """One investigation event as the swarm publishes it: {id, investigation_id, kind, at, data}."""

    id: int
    investigation_id: str
    kind: str
    data: Mapping[str, Any]

    @classmethod
    def from_json(cls, payload: bytes | str) -> Event:
        """Raises ValueError when the payload is not an event."""
        try:
            value = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        ident, investigation, kind, data = (value.get(k) for k in ("id", "investigation_id", "kind", "data"))
        if not isinstance(ident, int) or isinstance(ident, bool):
            raise ValueError("`id` is not an integer")
        if not isinstance(investigation, str) or not investigation:
            raise ValueError("`investigation_id` is not a string")
        if not isinstance(kind, str) or not kind:
            raise ValueError("`kind` is not a string")
        if not isinstance(data, dict):
            raise ValueError("`data` is not an object")
        return cls(ident, investigation, kind, data)


@dataclass(frozen=True)
class Reaction:
    """How one event moves the avatar."""

    state: ResearchState
    trigger: str              # the narration template (services/avatar/narration.py)
    fields: Mapping[str, str]  # the event's values the template is filled with
    strength: float           # 0..1: how strongly the state's emotions are felt
    gaze: tuple[float, float]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return clip(str(value))
    return ""


def _reaction(event: Event, state: ResearchState, trigger: str, strength: float, **values: Any) -> Reaction | None:
    fields = {name: _text(values.get(name, event.data.get(name))) for name in fields_of(trigger)}
    if any(not value for value in fields.values()):
        return None  # an event without the fields its narration needs is not one this schema knows
    gaze = GAZES[state]
    if state is ResearchState.SCANNING:
        gaze = (SCAN_SWEEP[event.id % len(SCAN_SWEEP)], gaze[1])
    return Reaction(state, trigger, fields, max(0.0, min(1.0, strength)), gaze)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _is_threat(name: Any, threats: set[str]) -> bool:
    if not isinstance(name, str):
        return False
    return name in threats or ("--" in name and name.split("--", 1)[0] in THREAT_TYPES)


def react(event: Event, threats: set[str]) -> Reaction | None:
    """How `event` moves the avatar, given the threats the investigation named so far; None: it does not."""
    data, kind = event.data, event.kind
    match kind:
        case "phase":
            state = _PHASE_STATES.get(str(data.get("phase")))
            return None if state is None else _reaction(event, state, "phase", 0.6)
        case "plan":
            tasks = data.get("tasks")
            if not isinstance(tasks, list):
                return None
            return _reaction(event, ResearchState.THINKING, "plan", 0.5,
                             tasks=f"{len(tasks)} task" if len(tasks) == 1 else f"{len(tasks)} tasks")
        case "tool_call":
            args = data.get("args") if isinstance(data.get("args"), dict) else {}
            target = args.get("target") if isinstance(args, dict) else None
            if isinstance(target, str) and target.strip():
                return _reaction(event, ResearchState.SCANNING, "tool_call", 0.5, target=target)
            return _reaction(event, ResearchState.SCANNING, "tool_call_plain", 0.5)
        case "tool_result":
            if data.get("status") != "error":
                return None
            return _reaction(event, ResearchState.CONCERNED, "tool_failed", 0.5,
                             error=data.get("error") or "no reason given")
        case "evidence":
            return _reaction(event, ResearchState.SCANNING, "evidence", 0.6)
        case "entity":
            if str(data.get("type")) not in THREAT_TYPES:
                return None
            return _reaction(event, ResearchState.ALERT_DISCOVERY, "threat_entity", 1.0)
        case "relation":
            if str(data.get("type")) not in THREAT_RELATIONS or not (
                    _is_threat(data.get("target"), threats) or _is_threat(data.get("source"), threats)):
                return None
            return _reaction(event, ResearchState.ALERT_DISCOVERY, "threat_relation", 0.95)
        case "hypothesis":
            confidence = _number(data.get("confidence"))
            if confidence is None:
                return None
            if confidence < LOW_CONFIDENCE:
                return _reaction(event, ResearchState.UNCERTAIN, "hypothesis_weak", 0.9)
            if confidence < STRONG_CONFIDENCE:
                return _reaction(event, ResearchState.THINKING, "hypothesis_tentative", 0.7)
            return _reaction(event, ResearchState.FOCUSED_ANALYSIS, "hypothesis_strong", confidence)
        case "vote":
            ranking = data.get("ranking")
            first = ranking[0] if isinstance(ranking, list) and ranking else None
            return _reaction(event, ResearchState.THINKING, "vote", 0.5, first=first)
        case "consensus":
            if data.get("winner"):
                return _reaction(event, ResearchState.FOCUSED_ANALYSIS, "consensus", 0.9)
            return _reaction(event, ResearchState.UNCERTAIN, "no_consensus", 0.8)
        case "mode_switch":
            return _reaction(event, ResearchState.UNCERTAIN, "mode_switch", 0.7)
        case "budget":
            tokens, limit = _number(data.get("tokens")), _number(data.get("max_tokens"))
            if tokens is None or not limit or tokens / limit < BUDGET_NEAR:
                return None
            return _reaction(event, ResearchState.CONCERNED, "budget", min(1.0, tokens / limit))
        case "warning":
            return _reaction(event, ResearchState.CONCERNED, "warning", 0.7)
        case "error":
            return _reaction(event, ResearchState.ERROR, "error", 1.0)
        case "done":
            status = str(data.get("status"))
            if status not in _DONE:
                return None
            state, strength = _DONE[status]
            cited = status == "completed" and _number(data.get("citation_integrity")) is not None
            trigger = "done_completed_cited" if cited else f"done_{status}"
            return _reaction(event, state, trigger, strength, reason=data.get("reason") or "no reason given")
    return None


@dataclass(frozen=True)
class View:
    """The avatar of one investigation at one moment (what AvatarState carries)."""

    investigation_id: str
    state: ResearchState
    emotions: dict[str, float]  # every name of EMOTIONS, in that order, rounded to 3 places
    expression: str
    intensity: float
    gaze: tuple[float, float]
    color: str
    narration: str
    cause_kind: str
    cause_id: str
    personality: Personality
    seq: int
    updated_at: float  # Unix time this view is of (its emotions faded to then)


class Mind:
    """One investigation's avatar. Times are Unix seconds, given by the caller (tests pass their own)."""

    def __init__(self, investigation_id: str, personality: Personality, *, half_life_s: float, idle_after_s: float,
                 now: float) -> None:
        self.investigation_id = investigation_id
        self.personality = personality
        self.half_life_s = half_life_s
        self.idle_after_s = idle_after_s
        self.state = ResearchState.IDLE
        self.reaction: Reaction | None = None
        self.cause = ("", "")  # (kind, id) of the event behind the reaction
        self.seq = 0
        self.reacted_at = now   # the last reaction; idle_after_s counts from it
        self.last_event_id = 0
        self.levels = dict.fromkeys(EMOTIONS, 0.0)
        self.levels_at = now    # when `levels` were last brought up to date
        self.threats: set[str] = set()

    def emotions(self, now: float) -> dict[str, float]:
        """The emotion vector at `now`: `levels` faded by the half-life since they were set."""
        factor = 0.5 ** (max(0.0, now - self.levels_at) / self.half_life_s)
        return {name: self.levels[name] * factor for name in EMOTIONS}

    def on_event(self, event: Event, now: float) -> bool:
        """Apply an event; True when the avatar changed. Repeated or older events (by id) are ignored."""
        if event.id <= self.last_event_id:
            return False
        self.last_event_id = event.id
        if event.kind == "entity" and str(event.data.get("type")) in THREAT_TYPES:
            value = event.data.get("value")
            if isinstance(value, str) and len(self.threats) < MAX_THREATS:
                self.threats.add(value)
        reaction = react(event, self.threats)
        if reaction is None:
            return False
        levels = self.emotions(now)
        profile = PROFILES[reaction.state]
        for name in EMOTIONS:
            if name in profile:
                levels[name] = max(levels[name], profile[name] * reaction.strength)
            else:  # the new state's feelings push the others back, so that the face follows the state
                levels[name] *= 1.0 - DISPLACE * reaction.strength
        self.levels, self.levels_at = levels, now
        self.state, self.reaction, self.cause = reaction.state, reaction, (event.kind, str(event.id))
        self.reacted_at = now
        self.seq += 1
        return True

    def set_personality(self, personality: Personality) -> bool:
        if personality is self.personality:
            return False
        self.personality = personality
        self.seq += 1
        return True

    def settle(self, now: float) -> bool:
        """Go idle when nothing moved the avatar for idle_after_s; True when it did just now."""
        if self.state is ResearchState.IDLE or now - self.reacted_at < self.idle_after_s:
            return False
        self.state, self.reaction, self.cause = ResearchState.IDLE, None, ("", "")
        self.seq += 1
        return True

    def view(self, now: float) -> View:
        emotions = {name: round(value, 3) for name, value in self.emotions(now).items()}
        dominant = max(EMOTIONS, key=lambda name: emotions[name])  # ties: the first in EMOTIONS
        intensity = emotions[dominant]
        trigger: str = "idle"
        fields: Mapping[str, str] = {}
        gaze = GAZES[ResearchState.IDLE]
        if self.reaction is not None:
            trigger, fields, gaze = self.reaction.trigger, self.reaction.fields, self.reaction.gaze
        return View(
            investigation_id=self.investigation_id, state=self.state, emotions=emotions,
            expression=dominant if intensity >= EXPRESSIVE else "neutral", intensity=intensity,
            gaze=gaze, color=COLORS[self.state], narration=narrate(trigger, self.personality, fields),
            cause_kind=self.cause[0], cause_id=self.cause[1], personality=self.personality, seq=self.seq,
            updated_at=now)
