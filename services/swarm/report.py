"""Investigation reports: the schema, the final verification pass, Markdown and STIX 2.1 renderings.

Pure functions over the report object that ``report.schema.json`` describes; nothing here does I/O.
The agents are small models reading untrusted pages, so nothing they write is presented as a
finding until :func:`verify` has checked it against the stored evidence it cites: an entity's value
must occur in a cited item, a relationship's two ends in one cited item, and a hypothesis needs a
verbatim quote from its supporting evidence. What fails is kept in ``unsupported`` with the reason,
for the record, and rendered as "not findings". Collected values stay untrusted in the renderings
too: Markdown escapes them, so that a value cannot inject a link, HTML or a table cell.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit, urlunsplit

import idna  # the swarm extra pins it (and httpx needs it)
import stix2
import stix2.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from bev.stix import BEV_NAMESPACE, HASH_BY_LENGTH, SCO_NAMESPACE, bundle, relationship_id

SCHEMA: dict[str, Any] = json.loads(
    resources.files(__package__ or "services.swarm").joinpath("report.schema.json").read_text(encoding="utf-8"))
_VALIDATOR = Draft202012Validator(SCHEMA)

EVIDENCE_PATH = "/api/v1/evidence/"  # the gateway route a citation links to

# Least to most restrictive: a rendering carries the most restrictive label of what it contains.
TLP_LEVELS: tuple[str, ...] = ("clear", "green", "amber", "amber+strict", "red")

# TLP 2.0 marking definitions (OASIS cti-stix-common-objects, extension-definition-specifications/
# tlp-2.0): fixed ids, so every consumer recognises them. STIX 2.1's own TLP markings are TLP 1.0,
# which has neither CLEAR nor AMBER+STRICT.
TLP2_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_MARKING_IDS: dict[str, str] = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}

_NO_QUOTE = "no quote found verbatim in its supporting evidence"


class ReportInvalid(ValueError):
    """A report that does not match the schema or is inconsistent; the message is one line."""


# --- validation ----------------------------------------------------------------------------------

def validate(report: Mapping[str, Any]) -> None:
    """Raise ReportInvalid unless `report` matches the schema and its ids are consistent.

    Beyond the schema: entity, hypothesis and evidence ids are unique, and the consensus winner is
    one of the hypotheses (or null), which JSON Schema cannot express.
    """
    error = best_match(_VALIDATOR.iter_errors(report))
    if error is not None:
        where = "/" + "/".join(str(part) for part in error.absolute_path)
        raise ReportInvalid(_one_line(f"report invalid at {where}: {error.message}"))
    for section in ("entities", "hypotheses", "evidence"):
        seen: set[str] = set()
        for item in report[section]:
            if item["id"] in seen:
                raise ReportInvalid(_one_line(f"report invalid at /{section}: duplicate id {item['id']!r}"))
            seen.add(item["id"])
    winner = report["consensus"]["winner"]
    if winner is not None and winner not in {h["id"] for h in report["hypotheses"]}:
        raise ReportInvalid(_one_line(f"report invalid at /consensus/winner: {winner!r} is not a hypothesis id"))


def _one_line(message: str, limit: int = 400) -> str:
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- verification --------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyStats:
    """What a verification pass did: claims (entities, relationships, hypotheses) checked, and moved."""

    checked: int
    moved: int


# Defanging conventions undone before matching (content and value alike), after case folding.
_REFANG: tuple[tuple[str, str], ...] = (
    ("[.]", "."), ("(.)", "."), ("{.}", "."), ("[dot]", "."), ("[://]", "://"), ("[:]", ":"),
    ("[@]", "@"), ("hxxp", "http"),
)


def _fold(text: str) -> str:
    """Case-folded, refanged, whitespace-collapsed: the form values are matched in."""
    folded = text.casefold()
    for defanged, plain in _REFANG:
        folded = folded.replace(defanged, plain)
    return " ".join(folded.split())


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _mentions(folded_content: str, value: str) -> bool:
    """Whether the value occurs in the content as a whole token, not inside a longer one.

    Substring alone would let 127.77.0.1 verify against 127.77.0.10, or example.com against
    example.community; a match whose edge is a word character must not continue into one.
    """
    needle = _fold(value)
    if not needle:
        return False
    start = folded_content.find(needle)
    while start != -1:
        end = start + len(needle)
        left_ok = start == 0 or not (_is_word(needle[0]) and _is_word(folded_content[start - 1]))
        right_ok = end == len(folded_content) or not (_is_word(needle[-1]) and _is_word(folded_content[end]))
        if left_ok and right_ok:
            return True
        start = folded_content.find(needle, start + 1)
    return False


def _quote_found(content: str, text: str) -> bool:
    """Verbatim (case and punctuation kept), whitespace differences aside; an empty quote proves nothing."""
    needle = " ".join(text.split())
    return bool(needle) and needle in " ".join(content.split())


class _Evidence:
    """The stored contents, folded once per item however many claims cite it."""

    def __init__(self, contents: Mapping[str, str]) -> None:
        self._contents = contents
        self._folded: dict[str, str] = {}

    def __contains__(self, evidence_id: object) -> bool:
        return evidence_id in self._contents

    def raw(self, evidence_id: str) -> str:
        return self._contents[evidence_id]

    def folded(self, evidence_id: str) -> str:
        if evidence_id not in self._folded:
            self._folded[evidence_id] = _fold(self._contents[evidence_id])
        return self._folded[evidence_id]

    def mentions(self, evidence_id: str, *values: str) -> bool:
        return evidence_id in self and all(_mentions(self.folded(evidence_id), v) for v in values)

    def quotes(self, evidence_id: str, text: str) -> bool:
        return evidence_id in self and _quote_found(self.raw(evidence_id), text)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _check_entity(entity: Mapping[str, Any], store: _Evidence) -> tuple[list[str], list[str]]:
    """(citations that verify, why the others do not)."""
    kept: list[str] = []
    problems: list[str] = []
    for evidence_id in _unique(entity["evidence"]):
        if evidence_id not in store:
            problems.append(f"cites unknown evidence {evidence_id}")
        elif store.mentions(evidence_id, entity["value"]):
            kept.append(evidence_id)
        else:
            problems.append(f"value {entity['value']!r} not found in cited evidence {evidence_id}")
    return kept, problems


def _check_relationship(relationship: Mapping[str, Any], store: _Evidence) -> tuple[list[str], list[str]]:
    """(citations naming both ends, why the others do not)."""
    kept: list[str] = []
    problems: list[str] = []
    ends = (("source", relationship["source"]), ("target", relationship["target"]))
    for evidence_id in _unique(relationship["evidence"]):
        if evidence_id not in store:
            problems.append(f"cites unknown evidence {evidence_id}")
            continue
        missing = [f"{role} {value!r}" for role, value in ends if not store.mentions(evidence_id, value)]
        if missing:
            problems.append(f"{' and '.join(missing)} not found in cited evidence {evidence_id}")
        else:
            kept.append(evidence_id)
    return kept, problems


def _check_hypothesis(hypothesis: Mapping[str, Any], store: _Evidence) -> tuple[dict[str, Any] | None, str]:
    """The hypothesis reduced to existing citations and verified quotes, or None and why."""
    supporting = [e for e in _unique(hypothesis["supporting"]) if e in store]
    contradicting = [e for e in _unique(hypothesis["contradicting"]) if e in store]
    unknown = _unique(e for e in (*hypothesis["supporting"], *hypothesis["contradicting"]) if e not in store)
    quotes: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for quote in hypothesis["quotes"]:
        key = (quote["evidence"], quote["text"])
        if key not in seen and quote["evidence"] in supporting and store.quotes(quote["evidence"], quote["text"]):
            quotes.append(dict(quote))
            seen.add(key)
    if not quotes:
        detail = f"; cites unknown evidence {', '.join(unknown)}" if unknown else ""
        return None, _NO_QUOTE + detail
    return {**copy.deepcopy(dict(hypothesis)), "supporting": supporting, "contradicting": contradicting,
            "quotes": quotes}, ""


def _best_hypothesis(hypotheses: Sequence[Mapping[str, Any]], scores: Mapping[str, float]) -> str | None:
    """The highest consensus score; ties (and unscored ones) by confidence, then report order."""
    if not hypotheses:
        return None
    ranked = sorted(enumerate(hypotheses), key=lambda pair: (
        -scores.get(pair[1]["id"], float("-inf")), -pair[1]["confidence"], pair[0]))
    return str(ranked[0][1]["id"])


def _verify(draft: Mapping[str, Any], evidence: Mapping[str, str]) -> tuple[dict[str, Any], VerifyStats]:
    report: dict[str, Any] = copy.deepcopy(dict(draft))
    report.setdefault("warnings", [])
    report.setdefault("unsupported", [])
    report.setdefault("citation_integrity", 0.0)
    validate(report)
    store = _Evidence(evidence)
    moved: list[dict[str, Any]] = []

    entities: list[dict[str, Any]] = []
    for entity in report["entities"]:
        kept, problems = _check_entity(entity, store)
        if kept:
            entities.append({**entity, "evidence": kept})
        else:
            moved.append({"claim": "entity", "item": entity, "reason": "; ".join(problems)})

    relationships: list[dict[str, Any]] = []
    for relationship in report["relationships"]:
        kept, problems = _check_relationship(relationship, store)
        if kept:
            relationships.append({**relationship, "evidence": kept})
        else:
            moved.append({"claim": "relationship", "item": relationship, "reason": "; ".join(problems)})

    hypotheses: list[dict[str, Any]] = []
    reasons: dict[str, str] = {}
    for hypothesis in report["hypotheses"]:
        verified, reason = _check_hypothesis(hypothesis, store)
        if verified is not None:
            hypotheses.append(verified)
        else:
            reasons[hypothesis["id"]] = reason
            moved.append({"claim": "hypothesis", "item": hypothesis, "reason": reason})

    checked = len(report["entities"]) + len(report["relationships"]) + len(report["hypotheses"])
    report.update(entities=entities, relationships=relationships, hypotheses=hypotheses)
    report["unsupported"] = [*report["unsupported"], *moved]

    consensus = report["consensus"]
    winner = consensus["winner"]
    if winner is not None and winner in reasons:
        replacement = _best_hypothesis(hypotheses, consensus["scores"])
        consensus["winner"] = replacement
        instead = (f"presenting {replacement}, the best-scoring verified hypothesis" if replacement
                   else "no verified hypothesis remains, so there is no winner")
        report["warnings"].append({
            "kind": "consensus", "evidence": None,
            "message": f"consensus winner {winner} was moved to unsupported ({reasons[winner]}); {instead}"})

    report["citation_integrity"] = citation_integrity(report, evidence)
    return report, VerifyStats(checked=checked, moved=len(moved))


def verify(draft: Mapping[str, Any], evidence: Mapping[str, str]) -> dict[str, Any]:
    """The final pass: a new report whose findings all rest on stored evidence; `draft` is untouched.

    `evidence` maps evidence id -> stored content. An entity stays when a cited item contains its
    value (case-insensitively, defanging undone, as a whole token), a relationship when one cited
    item contains both ends; their citations shrink to those that verify. A hypothesis keeps only
    existing supporting/contradicting ids and the quotes found verbatim in a supporting item, and
    stays if one quote is left. The rest move to ``unsupported`` with the reason. A winner that did
    not verify is replaced by the best-scoring verified hypothesis (or null) with a warning, and
    ``citation_integrity`` is recomputed (1.0 by construction). The draft may omit ``warnings``,
    ``unsupported`` and ``citation_integrity``; otherwise it must validate (ReportInvalid).
    For how many claims were checked and moved, use :func:`verify_with_stats` or :func:`verify_counts`.
    """
    return _verify(draft, evidence)[0]


def verify_with_stats(draft: Mapping[str, Any], evidence: Mapping[str, str]) -> tuple[dict[str, Any], VerifyStats]:
    """:func:`verify`, with its counts (the report schema is closed, so they cannot ride in it)."""
    return _verify(draft, evidence)


def verify_counts(draft: Mapping[str, Any], evidence: Mapping[str, str]) -> tuple[int, int]:
    """(claims checked, claims moved to unsupported) of verifying `draft`: runs the pass again."""
    stats = _verify(draft, evidence)[1]
    return stats.checked, stats.moved


def citation_integrity(report: Mapping[str, Any], evidence: Mapping[str, str]) -> float:
    """Share of the presented findings' citations that resolve (1.0 with none), on any report.

    Entity and relationship citations resolve when the item exists and names the value(s); a
    hypothesis's supporting and contradicting ids when the item exists; a quote when it is found
    verbatim in a supporting item. After :func:`verify` this is 1.0; a stored report rechecked
    later (evidence expired, report edited) can fall below.
    """
    store = _Evidence(evidence)
    outcomes: list[bool] = []
    for entity in report["entities"]:
        outcomes += [store.mentions(e, entity["value"]) for e in entity["evidence"]]
    for rel in report["relationships"]:
        outcomes += [store.mentions(e, rel["source"], rel["target"]) for e in rel["evidence"]]
    for hypothesis in report["hypotheses"]:
        outcomes += [e in store for e in (*hypothesis["supporting"], *hypothesis["contradicting"])]
        outcomes += [q["evidence"] in hypothesis["supporting"] and store.quotes(q["evidence"], q["text"])
                     for q in hypothesis["quotes"]]
    return sum(outcomes) / len(outcomes) if outcomes else 1.0


# --- Markdown ------------------------------------------------------------------------------------

# Characters that start Markdown/GFM markup anywhere in a line: emphasis, code, links and images,
# raw HTML and autolinks, entity references, table cells, strikethrough, math, heading closers.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$#])")
# Markup that only counts at the start of a line: bullet lists, setext underlines, ordered lists.
_MD_BULLET = re.compile(r"^([-+=])")
_MD_ORDERED = re.compile(r"^(\d+)([.)])")


def _text(value: object) -> str:
    """Untrusted text as inert Markdown on one line (safe in a table cell too)."""
    flat = _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))
    return _MD_ORDERED.sub(r"\1\\\2", _MD_BULLET.sub(r"\\\1", flat))


def _code(value: object, *, cell: bool = False) -> str:
    """An untrusted value (indicator, URI) as a code span: shown verbatim, never a link."""
    flat = " ".join(str(value).split())
    runs = [len(run) for run in re.findall(r"`+", flat)]
    fence = "`" * (max(runs, default=0) + 1)
    if flat.startswith(("`", " ")) or flat.endswith(("`", " ")):
        flat = f" {flat} "
    if cell:
        flat = flat.replace("|", "\\|")  # GFM splits cells before parsing code spans
    return f"{fence}{flat}{fence}"


def _cite(evidence_id: str) -> str:
    return f"[{_text(evidence_id)}]({EVIDENCE_PATH}{url_quote(evidence_id, safe='')})"


def _cites(evidence_ids: Iterable[str]) -> str:
    return ", ".join(_cite(e) for e in evidence_ids) or "none"


def _shorten(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def most_restrictive(levels: Iterable[str]) -> str:
    """The most restrictive TLP label among `levels` ("clear" for none)."""
    return max(levels, key=TLP_LEVELS.index, default="clear")


def _tlp_name(level: str) -> str:
    return f"TLP:{level.upper()}"


def _hypothesis_md(hypothesis: Mapping[str, Any], winner: str | None) -> list[str]:
    star = " (consensus winner)" if hypothesis["id"] == winner else ""
    votes = ", ".join(f"{_text(v['agent'])}: #{v['rank']}" for v in sorted(hypothesis["votes"], key=lambda v: v["rank"]))
    lines = [f"### {_text(hypothesis['id'])}{star}: {_text(hypothesis['statement'])}", "",
             f"- Confidence: {hypothesis['confidence']:.2f}",
             f"- Proposed by: {_text(hypothesis['proposed_by'])}",
             f"- Votes: {votes or 'none'}",
             f"- Supporting: {_cites(hypothesis['supporting'])}",
             f"- Contradicting: {_cites(hypothesis['contradicting'])}"]
    if hypothesis["quotes"]:
        lines.append("- Quotes:")
        lines += [f"  - “{_text(q['text'])}” ({_cite(q['evidence'])})" for q in hypothesis["quotes"]]
    lines += [f"- Counterfactual: {_text(hypothesis['counterfactual']) or 'none given'}", ""]
    return lines


def _unsupported_md(entry: Mapping[str, Any]) -> str:
    item = entry["item"]
    match entry["claim"]:
        case "entity":
            what = f"entity {_code(item.get('value', ''))} ({_text(item.get('type', ''))})"
            cited = item.get("evidence", [])
        case "relationship":
            what = (f"relationship {_code(item.get('source', ''))} {_text(item.get('type', ''))} "
                    f"{_code(item.get('target', ''))}")
            cited = item.get("evidence", [])
        case _:
            what = f"hypothesis {_text(item.get('id', ''))} “{_text(item.get('statement', ''))}”"
            cited = item.get("supporting", [])
    return f"- {what}, citing {', '.join(_code(e) for e in cited) or 'nothing'}: {_text(entry['reason'])}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """A readable analyst report; every collected or generated string in it is escaped."""
    inv = report["investigation"]
    consensus = report["consensus"]
    winner = consensus["winner"]
    tlp = most_restrictive([inv["tlp"], *(e["tlp"] for e in report["evidence"])])
    raised = f" (raised from {_tlp_name(inv['tlp'])} by the evidence it contains)" if tlp != inv["tlp"] else ""
    out = [f"# Investigation report: {_code(inv['target'])}", "",
           f"**{_tlp_name(tlp)}**{raised}", "",
           f"- Investigation: {_text(inv['id'])}",
           f"- Target: {_code(inv['target'])} ({_text(inv['target_type'])})",
           f"- Status: {_text(inv['status'])}",
           f"- Mode: {_text(inv['mode'])}",
           f"- Created: {_text(inv['created_at'])}; finished: {_text(inv['finished_at'] or 'not finished')}", "",
           "## Summary", ""]
    paragraphs = [p for p in re.split(r"\n\s*\n", report["summary"]) if p.strip()]
    for paragraph in paragraphs or ["No summary."]:
        out += [_text(paragraph), ""]

    out += ["## Hypotheses", ""]
    ordered = sorted(report["hypotheses"], key=lambda h: h["id"] != winner)  # the winner first
    for hypothesis in ordered:
        out += _hypothesis_md(hypothesis, winner)
    if not ordered:
        out += ["No hypothesis was verified.", ""]

    rules = {"borda": "Borda count", "ranked-pairs": "ranked pairs", "leader": "the leader's decision"}
    out += ["## Consensus", "", f"- Rule: {rules.get(consensus['rule'], _text(consensus['rule']))}",
            f"- Winner: {_text(winner) if winner else 'none'}"]
    presented = {h["id"] for h in report["hypotheses"]}

    def label(hypothesis_id: str) -> str:  # the vote record names hypotheses that did not verify too
        return _text(hypothesis_id) + ("" if hypothesis_id in presented else " (unsupported)")

    if consensus["scores"]:
        scores = sorted(consensus["scores"].items(), key=lambda kv: -kv[1])
        out.append("- Scores: " + ", ".join(f"{label(h)}: {s:g}" for h, s in scores))
    for agent, ranking in sorted(consensus["rankings"].items()):
        out.append(f"- {_text(agent)} ranked: {' > '.join(label(h) for h in ranking) or 'nothing'}")
    out.append("")

    if report["dissent"]:
        out += ["## Dissent", ""]
        out += [f"- {_text(d['agent'])} preferred {_text(d['preferred'])}: {_text(d['reason'])}"
                for d in report["dissent"]]
        out.append("")
    if report["mode_switches"]:
        out += ["## Mode switches", ""]
        out += [f"- {_text(s['from'])} → {_text(s['to'])}: {_text(s['reason'])}" for s in report["mode_switches"]]
        out.append("")

    out += ["## Entities", ""]
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for entity in report["entities"]:
        by_type.setdefault(entity["type"], []).append(entity)
    for type_name in sorted(by_type):
        rows = [(_code(e["value"], cell=True), str(e["confidence"]), _cites(e["evidence"]))
                for e in sorted(by_type[type_name], key=lambda e: (-e["confidence"], e["value"]))]
        out += [f"### {_text(type_name)}", "", *_table(("Value", "Confidence", "Evidence"), rows), ""]
    if not by_type:
        out += ["No entity was verified.", ""]

    out += ["## Relationships", ""]
    if report["relationships"]:
        rel_rows = [(_code(r["source"], cell=True), _text(r["type"]), _code(r["target"], cell=True), str(r["confidence"]),
                 _cites(r["evidence"])) for r in report["relationships"]]
        out += [*_table(("Source", "Relationship", "Target", "Confidence", "Evidence"), rel_rows), ""]
    else:
        out += ["No relationship was verified.", ""]

    if report["warnings"]:
        out += ["## Warnings", ""]
        out += [f"- **{_text(w['kind'])}**: {_text(w['message'])}" + (f" ({_cite(w['evidence'])})" if w["evidence"] else "")
                for w in report["warnings"]]
        out.append("")

    if report["unsupported"]:
        out += ["## Unsupported claims (not findings)", "",
                "> Proposed during the investigation but not backed by the evidence they cite. "
                "These are **not findings**; they are listed for review only.", ""]
        out += [_unsupported_md(entry) for entry in report["unsupported"]]
        out.append("")

    out += ["## Evidence", ""]
    if report["evidence"]:
        evidence_rows = [(_cite(e["id"]), _text(e["kind"]), _text(e["collector"]), _code(e["uri"], cell=True) if e["uri"] else "",
                 _text(e["collected_at"]), _tlp_name(e["tlp"]), _text(_shorten(e["excerpt"])))
                for e in report["evidence"]]
        out += [*_table(("Evidence", "Kind", "Collector", "URI", "Collected", "TLP", "Excerpt"), evidence_rows), ""]
    else:
        out += ["No evidence.", ""]

    usage = report["usage"]
    out += ["## Usage", "", f"- Tokens: {usage['tokens']:,}", f"- Tool calls: {usage['tool_calls']:,}",
            f"- Wall time: {usage['wall_s']:.1f} s",
            f"- Citation integrity: {report['citation_integrity']:.0%} of citations resolve to evidence that supports them",
            ""]
    return "\n".join(out)


# --- STIX 2.1 --------------------------------------------------------------------------------------

_SCO_BY_VALUE: dict[str, Any] = {
    "domain-name": stix2.DomainName, "ipv4-addr": stix2.IPv4Address, "ipv6-addr": stix2.IPv6Address,
    "url": stix2.URL, "email-addr": stix2.EmailAddress, "mac-addr": stix2.MACAddress,
}
_SDO_BY_NAME: dict[str, Any] = {
    "malware": stix2.Malware, "intrusion-set": stix2.IntrusionSet, "campaign": stix2.Campaign,
    "attack-pattern": stix2.AttackPattern, "vulnerability": stix2.Vulnerability, "threat-actor": stix2.ThreatActor,
    "tool": stix2.Tool, "identity": stix2.Identity, "infrastructure": stix2.Infrastructure,
    "course-of-action": stix2.CourseOfAction,
}
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_HEX = re.compile(r"[0-9a-fA-F]+")
_STIX_ERRORS = (stix2.exceptions.STIXError, ValueError, TypeError)


def tlp_marking(level: str) -> dict[str, Any]:
    """The OASIS TLP 2.0 marking-definition object for `level`, exactly as published."""
    return {"type": "marking-definition", "spec_version": "2.1", "id": TLP2_MARKING_IDS[level],
            "created": "2022-10-01T00:00:00.000Z", "name": _tlp_name(level),
            "extensions": {TLP2_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": level}}}


def _stix_time(value: str) -> str:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _bev_id(type_name: str, key: str) -> str:
    # The collectors' scheme for ids STIX leaves random: the same SDO gets the same id in the graph.
    return f"{type_name}--{uuid.uuid5(BEV_NAMESPACE, key)}"


def _given_id(entity: Mapping[str, Any]) -> str | None:
    """The entity's own id when it is a STIX id of its type (so the export joins the graph)."""
    entity_id = str(entity["id"])
    return entity_id if re.fullmatch(re.escape(entity["type"]) + "--" + _UUID, entity_id) else None


def _crypto_currency(address: str) -> str:
    if re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
        return "ETH"
    if re.fullmatch(r"(bc1|[13])[a-zA-HJ-NP-Z0-9]{25,87}", address):
        return "BTC"
    return ""


def _uri(value: str) -> str | None:
    """A URL as an RFC 3986 URI: characters URIs do not allow (spaces, `|`, non-ASCII) percent-encoded."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # e.g. a bracket in the host that is not an IPv6 literal
        return None
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme):
        return None

    def encode(component: str, safe: str) -> str:
        return url_quote(re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", component), safe=safe + "%")

    return urlunsplit((parts.scheme, encode(parts.netloc, "!$&'()*+,;=:@[]"), encode(parts.path, "!$&'()*+,;=:@/"),
                       encode(parts.query, "!$&'()*+,;=:@/?"), encode(parts.fragment, "!$&'()*+,;=:@/?")))


def _hostname_ok(value: str) -> bool:
    """STIX wants an IDNA 2008 host name (its validator checks with idna, as here)."""
    try:
        ascii_name = idna.encode(value.removesuffix(".")).decode("ascii")
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
        return False
    return all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in ascii_name.split("."))


def _sco_value(type_name: str, value: str) -> str | None:
    """The value as this SCO type's `value` must be, or None when it cannot be one."""
    try:
        match type_name:
            case "ipv4-addr" | "ipv6-addr":  # an address or a CIDR block, the prefix as a length
                network = ipaddress.ip_network(value, strict=False)
                ok = f"ipv{network.version}-addr" == type_name and re.fullmatch(r"[0-9A-Fa-f:.%]+(/[0-9]{1,3})?", value)
                return value if ok else None
            case "domain-name":
                return value if _hostname_ok(value) else None
            case "email-addr":
                return value if re.fullmatch(r"[^@\s]+@[^@\s]+", value) else None
            case "mac-addr":
                mac = value.lower().replace("-", ":")
                return mac if re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac) else None
            case "url":
                return _uri(value)
    except ValueError:
        return None
    return value


def _as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(obj.serialize())
    return result


def _evidence_refs(citations: Iterable[str]) -> list[dict[str, str]]:
    return [{"source_name": "bev-evidence", "external_id": e} for e in citations]


def _entity_object(entity: Mapping[str, Any], when: str, marking: str) -> dict[str, Any] | None:
    """The entity as a STIX object, or None when STIX has no object that can hold it."""
    type_name, value, given = entity["type"], entity["value"], _given_id(entity)
    ids = {"id": given} if given else {}
    if type_name in _SCO_BY_VALUE:
        sco_value = _sco_value(type_name, value)
        if sco_value is None:
            return None
        return _as_dict(_SCO_BY_VALUE[type_name](value=sco_value, object_marking_refs=[marking], **ids))
    if type_name == "file":
        algorithm = HASH_BY_LENGTH.get(len(value)) if _HEX.fullmatch(value) else None
        props = {"hashes": {algorithm: value.lower()}} if algorithm else {"name": value}
        return _as_dict(stix2.File(object_marking_refs=[marking], **props, **ids))
    if type_name == "autonomous-system":
        number = value.upper().removeprefix("AS")
        if not number.isdigit():
            return None
        return _as_dict(stix2.AutonomousSystem(number=int(number), object_marking_refs=[marking], **ids))
    if type_name.startswith("x-"):
        # A custom observable, as the collectors store it (services/collectors/observables.py).
        obj: dict[str, Any] = {"type": type_name, "spec_version": "2.1", "value": value,
                               "object_marking_refs": [marking]}
        if type_name == "x-crypto-address":
            obj["currency"] = _crypto_currency(value)
        # Entities carry the collectors' id; this is only for one that does not (the SCO id over its value).
        digest = uuid.uuid5(SCO_NAMESPACE, json.dumps({"value": value}, separators=(",", ":"), ensure_ascii=False))
        obj["id"] = given or f"{type_name}--{digest}"
        return obj
    common: dict[str, Any] = {"id": given or _bev_id(type_name, f"{type_name}:{value}"), "created": when,
                              "modified": when, "confidence": entity["confidence"],
                              "object_marking_refs": [marking],
                              "external_references": _evidence_refs(entity["evidence"])}
    if type_name in _SDO_BY_NAME:
        extra: dict[str, Any] = {}
        if type_name == "malware":
            extra["is_family"] = True
        if type_name == "vulnerability" and value.upper().startswith("CVE-"):
            common["external_references"] = [{"source_name": "cve", "external_id": value.upper()},
                                              *common["external_references"]]
        return _as_dict(_SDO_BY_NAME[type_name](name=value, **common, **extra))
    if type_name == "indicator":
        try:  # only a value that is a STIX pattern makes an indicator
            return _as_dict(stix2.Indicator(name=value, pattern=value, pattern_type="stix", valid_from=when, **common))
        except _STIX_ERRORS:
            return None
    return None


def _fallback_note(entity: Mapping[str, Any], when: str, marking: str, report_id: str) -> dict[str, Any]:
    """An entity of a type STIX cannot hold (a place name, a non-pattern indicator) kept as a note."""
    return _as_dict(stix2.Note(
        id=_bev_id("note", f"entity:{entity['type']}:{entity['value']}"), created=when, modified=when,
        abstract=f"{entity['type']}: {entity['value']}"[:200],
        content=f"Entity of type {entity['type']} (no STIX object for it): {entity['value']}",
        object_refs=[report_id], confidence=entity["confidence"], object_marking_refs=[marking],
        external_references=_evidence_refs(entity["evidence"])))


def _hypothesis_note(hypothesis: Mapping[str, Any], refs: list[str], when: str, marking: str, inv_id: str,
                     winner: bool, rule: str) -> dict[str, Any]:
    lines = [hypothesis["statement"], "", f"Confidence: {hypothesis['confidence']:.2f}"
             + (f" (consensus winner, {rule})" if winner else "") + "."]
    lines += [f'Quote ({q["evidence"]}): "{q["text"]}"' for q in hypothesis["quotes"]]
    if hypothesis["contradicting"]:
        lines.append(f"Contradicting evidence: {', '.join(hypothesis['contradicting'])}.")
    if hypothesis["counterfactual"]:
        lines.append(f"Counterfactual: {hypothesis['counterfactual']}")
    return _as_dict(stix2.Note(
        id=_bev_id("note", f"hypothesis:{inv_id}:{hypothesis['id']}"), created=when, modified=when,
        abstract=(f"Hypothesis {hypothesis['id']}" + (" (consensus)" if winner else ""))[:200],
        content="\n".join(lines), authors=[hypothesis["proposed_by"]], object_refs=refs,
        confidence=round(hypothesis["confidence"] * 100), object_marking_refs=[marking],
        external_references=_evidence_refs(_unique([*hypothesis["supporting"], *hypothesis["contradicting"]])),
        allow_custom=True))


def to_stix(report: Mapping[str, Any]) -> str:
    """The report as a STIX 2.1 bundle (JSON): entities, relationships, hypotheses as notes, a report.

    Entities reuse their id when it is a STIX id of their type (otherwise the collectors' id
    scheme); relationships link any two exported entities (SCOs included, which STIX 2.1 allows);
    a relationship whose ends are not both exported entities is left out. Each object carries the
    TLP 2.0 marking of the investigation or of the most restrictive evidence it cites, whichever
    is stricter; the report object, whose object_refs list every object but the markings, carries
    the most restrictive marking of all. Ids and timestamps are derived from the report, so the
    same report always gives the same bundle.
    """
    inv = report["investigation"]
    when = _stix_time(inv["finished_at"] or inv["created_at"])
    tlp_of = {e["id"]: e["tlp"] for e in report["evidence"]}
    levels: set[str] = set()

    def marking(citations: Iterable[str]) -> str:
        level = most_restrictive([inv["tlp"], *(tlp_of.get(c, inv["tlp"]) for c in citations)])
        levels.add(level)
        return TLP2_MARKING_IDS[level]

    report_id = _bev_id("report", f"report:{inv['id']}")
    objects: dict[str, dict[str, Any]] = {}
    by_value: dict[str, str] = {}
    by_folded: dict[str, str] = {}
    for entity in report["entities"]:
        mark = marking(entity["evidence"])
        try:
            obj = _entity_object(entity, when, mark)
        except _STIX_ERRORS:
            obj = None
        obj = obj or _fallback_note(entity, when, mark, report_id)
        objects.setdefault(obj["id"], obj)
        by_value.setdefault(entity["value"], obj["id"])
        by_folded.setdefault(_fold(entity["value"]), obj["id"])

    def ref(value: str) -> str | None:
        return by_value.get(value) or by_folded.get(_fold(value))

    for rel in report["relationships"]:
        source, target = ref(rel["source"]), ref(rel["target"])
        if source is None or target is None:
            continue
        rel_id = relationship_id(source, rel["type"], target)
        if rel_id in objects:
            continue
        objects[rel_id] = _as_dict(stix2.Relationship(
            id=rel_id, relationship_type=rel["type"], source_ref=source, target_ref=target, created=when,
            modified=when, confidence=rel["confidence"], object_marking_refs=[marking(rel["evidence"])],
            external_references=_evidence_refs(rel["evidence"]), allow_custom=True))

    entity_refs = [(_fold(value), obj_id) for value, obj_id in by_value.items()]
    winner = report["consensus"]["winner"]
    for hypothesis in report["hypotheses"]:
        said = _fold(" ".join([hypothesis["statement"], *(q["text"] for q in hypothesis["quotes"])]))
        refs = _unique(obj_id for folded, obj_id in entity_refs if _mentions(said, folded)) or [report_id]
        note = _hypothesis_note(hypothesis, refs, when, marking([*hypothesis["supporting"], *hypothesis["contradicting"]]),
                                inv["id"], hypothesis["id"] == winner, report["consensus"]["rule"])
        objects[note["id"]] = note

    if not objects:  # a report must reference something: say that nothing was found
        empty = _as_dict(stix2.Note(id=_bev_id("note", f"empty:{inv['id']}"), created=when, modified=when,
                                    content="The investigation presented no verified findings.",
                                    object_refs=[report_id], object_marking_refs=[marking([])]))
        objects[empty["id"]] = empty

    report_level = most_restrictive([inv["tlp"], *tlp_of.values(), *levels])
    levels.add(report_level)
    description = {"description": report["summary"]} if report["summary"].strip() else {}
    objects[report_id] = _as_dict(stix2.Report(
        id=report_id, name=f"BEV investigation {inv['id']}: {inv['target']}", published=when, created=when,
        modified=when, report_types=["threat-report"], object_refs=list(objects),
        object_marking_refs=[TLP2_MARKING_IDS[report_level]],
        external_references=[{"source_name": "bev-investigation", "external_id": inv["id"]}],
        allow_custom=True, **description))

    markings = [tlp_marking(level) for level in TLP_LEVELS if level in levels]
    return json.dumps(bundle([*markings, *objects.values()]), ensure_ascii=False)
