"""What the avatar says: one template per trigger (what kind of event moved it) and personality,
filled only from the fields of the event that caused it.

A template's own words carry style, never facts: every name, id, number and indicator in a narration
is a value of the cause event (a list's length at most, such as a plan's task count). Long values
are cut with an ellipsis rather than summarised, so that nothing is said the event did not say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum


class Personality(StrEnum):
    """How the avatar narrates (mirrors ``bev.avatar.v1.Personality``)."""

    ANALYST = "analyst"        # terse, factual
    MENTOR = "mentor"          # says what it means for the analyst
    RED_TEAMER = "red-teamer"  # blunt, adversarial


A, M, R = Personality.ANALYST, Personality.MENTOR, Personality.RED_TEAMER

# trigger -> personality -> template; the fields each trigger gets are those its templates name.
TEMPLATES: dict[str, dict[Personality, str]] = {
    "idle": {
        A: "Standing by: no new events.",
        M: "Nothing new right now; I will tell you when the agents report something.",
        R: "Quiet. Too quiet.",
    },
    "phase": {
        A: "Phase {phase} started.",
        M: "The investigation moves into its {phase} phase.",
        R: "{phase} phase. Let's see what breaks.",
    },
    "plan": {
        A: "{agent} planned {tasks}.",
        M: "{agent} drew up a plan of {tasks} to gather evidence.",
        R: "{agent} lined up {tasks}. Recon time.",
    },
    "tool_call": {
        A: "{agent} calls {tool} on {target}.",
        M: "{agent} asks {tool} about {target}; what it finds becomes evidence.",
        R: "{agent} hits {target} with {tool}.",
    },
    "tool_call_plain": {
        A: "{agent} calls {tool}.",
        M: "{agent} runs {tool} to gather evidence.",
        R: "{agent} fires off {tool}.",
    },
    "tool_failed": {
        A: "{tool} failed for {agent}: {error}",
        M: "A setback: {agent}'s call to {tool} failed ({error}).",
        R: "{agent}'s {tool} choked: {error}",
    },
    "evidence": {
        A: "New {kind} evidence {evidence} from {collector}: {uri}",
        M: "The {collector} collector stored {kind} evidence {evidence} from {uri}; report claims cite items like it.",
        R: "{collector} dragged in {kind} evidence {evidence}: {uri}",
    },
    "threat_entity": {
        A: "Found {type} {value} in evidence {evidence}.",
        M: "Evidence {evidence} names the {type} {value}. That deserves your attention.",
        R: "{type} {value}, right there in {evidence}. Game on.",
    },
    "threat_relation": {
        A: "{source} {type} {target}, per evidence {evidence}.",
        M: "Evidence {evidence} links {source} to {target} ({type}), and that points at a threat.",
        R: "{source} {type} {target}. Evidence {evidence} says so. Busted.",
    },
    "hypothesis_strong": {
        A: "Hypothesis {id} from {agent}, confidence {confidence}: {statement}",
        M: "{agent} puts forward {id} with confidence {confidence}: {statement}",
        R: "{agent} bets on {id} at {confidence}: {statement}",
    },
    "hypothesis_tentative": {
        A: "Weighing hypothesis {id} from {agent}, confidence {confidence}: {statement}",
        M: "{agent} is still weighing {id} (confidence {confidence}): {statement}",
        R: "{id} from {agent}, {confidence}. Maybe. {statement}",
    },
    "hypothesis_weak": {
        A: "Low confidence {confidence} in hypothesis {id} from {agent}: {statement}",
        M: "{agent} is unsure of {id}, confidence only {confidence}: {statement}",
        R: "{agent}'s {id} at {confidence}? Flimsy. {statement}",
    },
    "vote": {
        A: "{agent} voted; first choice {first}.",
        M: "{agent} cast a ranked vote with {first} on top.",
        R: "{agent} backs {first}.",
    },
    "consensus": {
        A: "Consensus by {rule}: {winner}.",
        M: "The agents agree, by {rule} vote, on {winner}.",
        R: "{winner} takes the {rule} vote.",
    },
    "no_consensus": {
        A: "No consensus under {rule}.",
        M: "The agents could not agree under the {rule} rule.",
        R: "No winner under {rule}. Split room.",
    },
    "mode_switch": {
        A: "Switching from {from} to {to}: {reason}.",
        M: "The swarm moves from {from} to {to} mode because {reason}.",
        R: "{from} didn't cut it ({reason}). Going {to}.",
    },
    "budget": {
        A: "Used {tokens} of {max_tokens} model tokens.",
        M: "The budget runs low: {tokens} of {max_tokens} model tokens spent.",
        R: "{tokens} of {max_tokens} tokens burned. Clock's ticking.",
    },
    "warning": {
        A: "Warning {warning}: {message}",
        M: "Heads up, a {warning} warning: {message}",
        R: "{warning}: {message}",
    },
    "error": {
        A: "Error: {message}",
        M: "Something went wrong: {message}",
        R: "Broken: {message}",
    },
    "done_completed": {
        A: "Investigation completed.",
        M: "The investigation is complete; its report is ready to read.",
        R: "Done. Report's in.",
    },
    "done_completed_cited": {
        A: "Investigation completed; citation integrity {citation_integrity}.",
        M: "The investigation is complete, with citation integrity {citation_integrity}; its report is ready to read.",
        R: "Done. Citation integrity {citation_integrity}. Report's in.",
    },
    "done_failed": {
        A: "Investigation failed: {reason}",
        M: "The investigation failed: {reason}",
        R: "It's dead: {reason}",
    },
    "done_budget_exhausted": {
        A: "Stopped, budget exhausted: {reason}",
        M: "The investigation ran out of budget ({reason}); its partial report is kept.",
        R: "Out of budget: {reason}",
    },
    "done_cancelled": {
        A: "Investigation cancelled: {reason}",
        M: "The investigation was cancelled ({reason}); its partial report is kept.",
        R: "Called off: {reason}",
    },
}

MAX_FIELD = 120      # characters of one field's value (a statement, a warning's message)
MAX_NARRATION = 300  # well under Speak's 400, so a narration can always be spoken
_SPACES = re.compile(r"\s+")
_FIELD = re.compile(r"\{(\w+)\}")


def clip(value: str, limit: int = MAX_FIELD) -> str:
    """One line of at most `limit` characters: control characters and runs of spaces become one
    space, and a longer value is cut at a word with an ellipsis."""
    text = _SPACES.sub(" ", "".join(c if c.isprintable() else " " for c in value)).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + "…"


def fields_of(trigger: str) -> set[str]:
    """The fields a trigger's templates use (every personality's template uses the same ones)."""
    return {name for template in TEMPLATES[trigger].values() for name in _FIELD.findall(template)}


def narrate(trigger: str, personality: Personality, fields: Mapping[str, str]) -> str:
    """The trigger's template for `personality`, filled with `fields` (already clipped)."""
    template = TEMPLATES[trigger][personality]
    for name, value in fields.items():
        if value.endswith((".", "!", "?", "…")):  # a value that ends its own sentence: no ".." after it
            template = template.replace(f"{{{name}}}.", f"{{{name}}}")
    text = template.format_map(dict(fields)).strip()
    if text and text[-1] not in ".!?…":
        text += "."
    return clip(text, MAX_NARRATION)
