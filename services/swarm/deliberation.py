"""Hypotheses, votes and the coordination modes.

Agents propose with reasoning.Analyze over evidence items (each item's id is the document id, so
every claim the model picks comes back with its exact quote and the evidence it came from); they
rank with reasoning.Chat constrained to a JSON schema. Facts come from tools, the model fills the
schema's fields; a ranking the model garbles is repaired (duplicates dropped, missing ones appended
in confidence order) and says so in a warning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bev.reasoning.v1 import reasoning_pb2
from bev.rpc import RpcError
from bev.vocab import Tier
from services.swarm.agents import Agent, Investigation, Refused
from services.swarm.roles import ANALYZE, CHAT, SPECIALISTS
from services.swarm.store import EvidenceRow
from services.swarm.voting import Consensus, borda

INJECTION = re.compile(
    r"\bignore (all |any )?(previous|prior|above|earlier) (instructions|prompts)\b|\bdisregard (the|all|your) "
    r"(previous |prior )?(instructions|rules)\b|\byou are now (a|an) (ai|assistant|agent|model)\b|"
    r"\b(reveal|print|show) (your|the) system prompt\b|\bnew instructions:",
    re.IGNORECASE)


def specialists_for(evidence: Sequence[EvidenceRow]) -> list[str]:
    """The specialists the evidence calls for (infrastructure always; the rest by what was found)."""
    types = {e.get("type") for item in evidence for e in _entities(item)}
    text = " ".join(item.content for item in evidence)
    wanted = ["infrastructure"]
    if types & {"malware", "intrusion-set", "threat-actor", "campaign", "attack-pattern"} or any(
            e.get("type") == "file" and (e.get("properties") or {}).get("x_static")
            for item in evidence for e in _entities(item)):  # an analysed sample
        wanted.append("threat-actor")
    if "x-crypto-address" in types:
        wanted.append("crypto")
    if ".onion" in text:
        wanted.append("darknet")
    return [name for name in SPECIALISTS if name in wanted]


def _entities(item: EvidenceRow) -> list[dict[str, Any]]:
    if "entity" in item.data:
        return [item.data["entity"]]
    return list(item.data.get("entities", []))


def view_for(role: str, evidence: Sequence[EvidenceRow], limit: int) -> list[EvidenceRow]:
    """The evidence an agent reads: the most telling items for its role first (pages and graph
    context before bare DNS records), `limit` in all."""
    wanted = {
        "infrastructure": {"domain-name", "ipv4-addr", "ipv6-addr", "url", "email-addr", "user-account", "location"},
        "crypto": {"x-crypto-address"},
        "threat-actor": {"malware", "intrusion-set", "campaign", "attack-pattern", "vulnerability", "file"},
        "darknet": {"url", "domain-name"},
    }.get(role, set())

    def score(item: EvidenceRow) -> tuple[int, int]:
        kinds = {"excerpt": 3, "graph": 2, "observation": 1}
        relevant = any(e.get("type") in wanted for e in _entities(item)) or (role == "darknet" and ".onion" in item.content)
        return (int(relevant) * 2 + kinds.get(item.kind, 0), len(item.content))

    return sorted(evidence, key=score, reverse=True)[:limit]


async def propose(agent: Agent, evidence: Sequence[EvidenceRow], max_hypotheses: int, tier: str) -> list[dict[str, Any]]:
    """The agent's own hypotheses (Analyze over its view of the evidence), each citing evidence."""
    inv = agent.investigation
    row = inv.row
    question = (f"{agent.role.prompt} The investigation's target is the {row.stix_type} {row.target}. "
                "What is it part of, who is behind it, and what does it do?")
    documents = [reasoning_pb2.Document(id=item.id, text=item.content[:4000], source=item.uri) for item in evidence]
    request = reasoning_pb2.AnalyzeRequest(question=question, documents=documents, tier=Tier(tier).to_proto(),
                                           session_id=inv.id, max_hypotheses=max_hypotheses)

    async def analyze() -> dict[str, Any]:
        answer = await inv.deps.reasoning.Analyze(request)
        tokens = sum(p.usage.prompt_tokens + p.usage.completion_tokens for p in answer.phases)
        claims = {c.id: {"evidence": c.provenance.document_id, "text": c.quote} for c in answer.claims}
        counter = {c.hypothesis_id: c.condition for c in answer.counterfactuals}
        return {"tokens": tokens, "summary": answer.synthesis.summary, "hypotheses": [
            {"id": h.id, "statement": h.statement, "confidence": round(float(h.confidence), 3),
             "quotes": [claims[c] for c in h.supporting_claims if c in claims],
             "contradicting": sorted({claims[c]["evidence"] for c in h.contradicting_claims if c in claims}),
             "counterfactual": counter.get(h.id, "")} for h in answer.hypotheses if h.statement.strip()]}

    await agent.doing("forming hypotheses")
    try:
        result: dict[str, Any] = await agent.call(ANALYZE, {"question": question, "documents": [d.id for d in documents]},
                                                  analyze)
    except (Refused, RpcError) as exc:
        await inv.emit("warning", agent=agent.name, warning="tool_error", message=f"analysis failed: {exc}")
        return []
    await add_tokens(inv, int(result["tokens"]))
    hypotheses = []
    proposed = [h for h in result["hypotheses"] if usable_statement(h["statement"])]
    if len(proposed) < len(result["hypotheses"]) or not proposed:
        drafted = draft_from_facts(agent.role.name, evidence)
        await inv.emit("warning", agent=agent.name, warning="model_output",
                       message=f"{len(result['hypotheses']) - len(proposed)} of {len(result['hypotheses'])} statements "
                               f"from the model were not sentences; {agent.name} drafted one from the graph's facts")
        if drafted is not None:
            proposed.append(drafted)
    for n, h in enumerate(proposed[:max_hypotheses], start=1):
        hypothesis = {
            "id": f"{agent.name}-H{n}", "statement": h["statement"], "confidence": h["confidence"],
            "proposed_by": agent.name, "votes": [], "supporting": sorted({q["evidence"] for q in h["quotes"]}),
            "contradicting": h["contradicting"], "quotes": h["quotes"], "counterfactual": h["counterfactual"]}
        hypotheses.append(hypothesis)
        await inv.emit("hypothesis", agent=agent.name, id=hypothesis["id"], statement=h["statement"],
                       confidence=h["confidence"], supporting=hypothesis["supporting"])
    return hypotheses


_WORD = re.compile(r"[A-Za-z]{3,}")
# "C1: C2: C3" or "claims C1 and C4": the model naming its inputs instead of saying something
# ("C2 servers" is threat-intelligence speech, and stays).
_CLAIM_LIST = re.compile(r"\bclaims?\s+C\d+\b|(\bC\d+\b[:,;]?\s*){3,}", re.IGNORECASE)
_MARKUP = re.compile(r'[{}\[\]"]')  # JSON the model left around (or instead of) its sentence


def usable_statement(text: str) -> bool:
    """A statement an analyst can read: a sentence of words, not a list of claim ids or numbers
    (what a 135M-parameter model writes into a free-text field all too often)."""
    words = _WORD.findall(text)
    return (len(words) >= 5 and len(" ".join(words)) >= 0.6 * len(text.strip()) and not _CLAIM_LIST.search(text)
            and not _MARKUP.search(text))


# The relation types each role reads first when it drafts a statement from facts.
_ROLE_RELATIONS: dict[str, tuple[str, ...]] = {
    "threat-actor": ("indicates", "sample-of", "attributed-to", "uses", "exploits", "communicates-with", "delivers"),
    "infrastructure": ("registrant-contact", "resolves-to", "name-server", "links-to", "mail-server", "mentions",
                       "located-at", "taken-at"),
    "crypto": ("sent-to", "same-owner"),
    "darknet": ("links-to", "related-to"),
    "analyst": ("indicates", "related-to", "links-to"),
    "skeptic": ("related-to", "links-to", "registrant-contact"),
}
_PHRASES = {"indicates": "is an indicator of", "attributed-to": "is attributed to", "uses": "uses",
            "registrant-contact": "is registered by", "resolves-to": "resolves to", "sent-to": "sent funds to",
            "same-owner": "has the same owner as", "links-to": "links to", "related-to": "is named together with",
            "exploits": "exploits", "communicates-with": "communicates with", "name-server": "is served by name server",
            "mail-server": "receives mail at", "sample-of": "is a sample of", "delivers": "delivers",
            "mentions": "mentions", "located-at": "is located in", "taken-at": "was taken at"}


def draft_from_facts(role: str, evidence: Sequence[EvidenceRow], facts: int = 3) -> dict[str, Any] | None:
    """A statement made only of relations the evidence states, each quoted from the evidence that
    states it: what the role says when its model's answer is unusable."""
    wanted = _ROLE_RELATIONS.get(role, _ROLE_RELATIONS["analyst"])
    found: list[tuple[int, str, str, str, str]] = []  # (preference, line, evidence, source, relation...)
    seen: set[str] = set()
    for item in evidence:
        for line in item.content.splitlines():
            # Only the relation lines the swarm itself wrote ("<value> <relation> <value>"), never
            # page text such as a title (what a page says is data, not a fact).
            if ":" in line.split(" ", 1)[0] or line.startswith(("title:", "name:", "description:")):
                continue
            for n, relation in enumerate(wanted):
                if f" {relation} " in line and line not in seen:
                    seen.add(line)
                    found.append((n, line, item.id, relation, ""))
    if not found:
        return None
    found.sort(key=lambda f: f[0])
    chosen = found[:facts]
    sentences = [line.replace(f" {relation} ", f" {_PHRASES.get(relation, relation)} ", 1)
                 for _, line, _, relation, _ in chosen]
    return {"statement": "The evidence states that " + "; ".join(sentences) + ".", "confidence": 0.5,
            "quotes": [{"evidence": ev, "text": line} for _, line, ev, _, _ in chosen], "contradicting": [],
            "counterfactual": ""}


async def _ask(agent: Agent, activity: str, key: Mapping[str, Any], question: str, schema: Mapping[str, Any],
               max_tokens: int, tier: str) -> dict[str, Any] | None:
    """One JSON-schema-constrained answer of the agent's model (reasoning.Chat), as the agent's tool
    call: the parsed object ({} if the model's text is not one), or None if the call failed."""
    inv = agent.investigation
    request = reasoning_pb2.ChatRequest(
        messages=[reasoning_pb2.ChatMessage(role="system", content=agent.role.prompt),
                  reasoning_pb2.ChatMessage(role="user", content=question)],
        max_tokens=max_tokens, temperature=0.2, tier=Tier(tier).to_proto(), session_id=inv.id,
        json_schema=json.dumps(schema))

    async def chat() -> dict[str, Any]:
        answer = await inv.deps.reasoning.Chat(request)
        return {"text": answer.text, "tokens": answer.usage.prompt_tokens + answer.usage.completion_tokens}

    await agent.doing(activity)
    try:
        result: dict[str, Any] = await agent.call(CHAT, key, chat)
    except (Refused, RpcError) as exc:
        await inv.emit("warning", agent=agent.name, warning="tool_error", message=f"{activity} failed: {exc}")
        return None
    await add_tokens(inv, int(result["tokens"]))
    try:
        parsed = json.loads(result["text"])
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _one_field(name: str, max_length: int) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string", "maxLength": max_length}},
            "required": [name], "additionalProperties": False}


async def rank(agent: Agent, hypotheses: Sequence[Mapping[str, Any]], tier: str) -> list[str]:
    """The agent's ranking of every hypothesis, best first (a JSON-schema-constrained answer)."""
    inv = agent.investigation
    ids = [h["id"] for h in hypotheses]
    if len(ids) < 2:
        return ids
    listing = "\n".join(f"{h['id']}: {h['statement']}" for h in hypotheses)
    schema = {"type": "object", "properties": {"ranking": {"type": "array", "items": {"enum": ids},
                                                           "minItems": len(ids), "maxItems": len(ids)}},
              "required": ["ranking"], "additionalProperties": False}
    by_confidence = [h["id"] for h in sorted(hypotheses, key=lambda h: -float(h["confidence"]))]
    answer = await _ask(agent, "ranking hypotheses", {"rank": ids, "agent": agent.name},
                        f"Target: {inv.row.target}. Rank these hypotheses from best supported by the evidence to "
                        f"worst. Answer with the ids in order.\n{listing}", schema, 120, tier)
    if answer is None:
        return by_confidence
    proposed = answer.get("ranking", [])
    ranking = list(dict.fromkeys(h for h in proposed if h in ids)) if isinstance(proposed, list) else []
    if len(ranking) < len(ids):
        await inv.emit("warning", agent=agent.name, warning="ranking_repaired",
                       message=f"{agent.name} ranked {len(ranking)} of {len(ids)} hypotheses; the rest follow by confidence")
        ranking += [h for h in by_confidence if h not in ranking]
    await inv.emit("vote", agent=agent.name, ranking=ranking)
    return ranking


async def counterfactual(agent: Agent, hypothesis: Mapping[str, Any], tier: str) -> str:
    """What would have to be true for the hypothesis to be wrong (one constrained sentence)."""
    answer = await _ask(agent, f"counterfactual for {hypothesis['id']}", {"counterfactual": hypothesis["id"]},
                        f"Hypothesis: {hypothesis['statement']}\nWhat would have to be true for it to be wrong?",
                        _one_field("condition", 300), 120, tier)
    return str((answer or {}).get("condition", "")).strip()


async def summarize(agent: Agent, facts: str, tier: str) -> str:
    answer = await _ask(agent, "writing the summary", {"summary": facts[:2000]},
                        f"Findings:\n{facts}\nSummarise them.", _one_field("summary", 600), 200, tier)
    return str((answer or {}).get("summary", "")).strip()


async def add_tokens(inv: Investigation, tokens: int) -> None:
    total = await inv.deps.store.add_tokens(inv.id, tokens)
    await inv.emit("budget", tokens=total, max_tokens=inv.row.budget["max_tokens"])


def leader_choice(hypotheses: Sequence[Mapping[str, Any]]) -> Consensus:
    """Hierarchical mode: the leader takes the best-supported hypothesis (confidence, then citations)."""
    order = [h["id"] for h in sorted(hypotheses, key=lambda h: (-float(h["confidence"]), -len(h["supporting"])))]
    scores = {h["id"]: float(h["confidence"]) for h in hypotheses}
    return Consensus(rule="leader", winner=order[0] if order else None, scores=scores, order=tuple(order),
                     rankings={"leader": tuple(order)})


def needs_vote(hypotheses: Sequence[Mapping[str, Any]], min_confidence: float, margin: float) -> str:
    """Hybrid mode's switch: why the hypotheses need a democratic vote, or "" if they do not."""
    if not hypotheses:
        return ""
    ranked = sorted((float(h["confidence"]) for h in hypotheses), reverse=True)
    if ranked[0] < min_confidence:
        return f"best confidence {ranked[0]:.2f} below {min_confidence:.2f}"
    if len(ranked) > 1 and ranked[0] - ranked[1] < margin:
        return f"hypotheses conflict: confidences {ranked[0]:.2f} and {ranked[1]:.2f} within {margin:.2f}"
    if any(h["contradicting"] for h in hypotheses):
        return "a hypothesis has contradicting evidence"
    return ""


def vote(rankings: Mapping[str, Sequence[str]], hypotheses: Sequence[Mapping[str, Any]]) -> Consensus:
    return borda(rankings, [h["id"] for h in hypotheses])


def injection_warnings(evidence: Sequence[EvidenceRow]) -> list[dict[str, Any]]:
    """The monitor's scan: collected text that reads like instructions to an AI (it is data, and was
    treated as data; the analyst should know it is there)."""
    warnings = []
    for item in evidence:
        match = INJECTION.search(item.content)
        if match:
            warnings.append({"kind": "prompt_injection", "evidence": item.id,
                             "message": f"collected text reads like an instruction to an AI ({match.group(0)!r} "
                                        f"in {item.uri}); it was treated as data"})
    return warnings
