"""Analyze: the design's 5 phases, each a prompt whose answer is JSON constrained by a schema.

1. ingestion: map-reduce over the input. Pre-selection (services/reasoning/evidence.py) picks the
   best chunks and sentences; the model, per chunk, picks the sentences that are evidence for the
   question. Picked sentences become claims C1..Cn with document, chunk and character offsets.
2. hypotheses: explanations citing claims (claim ids are an enum in the schema: no invented ids).
3. correlation: per hypothesis, which claims support or contradict it, and a confidence.
4. counterfactuals: what would have to be true for each hypothesis to be wrong.
5. synthesis: summary, key findings, the best hypothesis.

The engine's grammar enforces the JSON shape but not numeric bounds, so answers are validated
again (jsonschema) after parsing; the parser accepts everything the grammar admits, raw control
characters in strings included (services/reasoning/answers.py). A malformed answer is asked for
once more, with the error; a second failure becomes that phase's error and the phases after it
work with what exists (synthesis without hypotheses summarises the evidence).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from bev.reasoning.v1 import reasoning_pb2
from bev.rpc import RpcError, StatusCode
from services.reasoning.answers import MalformedAnswer, parse_answer
from services.reasoning.backends import ChatParams
from services.reasoning.evidence import Chunk, Sentence, chunk_document, question_terms, select, term_weights
from services.reasoning.router import Router
from services.reasoning.settings import AnalyzeConfig

SYSTEM = (
    "You are a careful threat-intelligence analyst. Answer only with JSON matching the schema. "
    "Base every statement on the numbered evidence you are given."
)
TEXT_CHARS = 200  # longest free-text field the model may write
MIN_CLAIMS = 3    # fewer picked by the model: top up by pre-selection score (flagged model_selected=false)


class PhaseFailed(Exception):
    pass


@dataclass
class PhaseLog:
    phase: reasoning_pb2.Phase.ValueType
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def report(self) -> reasoning_pb2.PhaseReport:
        return reasoning_pb2.PhaseReport(
            phase=self.phase,
            usage=reasoning_pb2.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
            calls=self.calls, error="; ".join(self.errors), seconds=time.perf_counter() - self.started,
        )


@dataclass
class _State:
    """One Analyze call: its input, the response being filled, and what each phase leaves for the next."""

    request: reasoning_pb2.AnalyzeRequest
    tier: str
    texts: list[str]
    ids: list[str]  # document ids, parallel to texts
    response: reasoning_pb2.AnalyzeResponse
    backends: list[str] = field(default_factory=list)  # every answer's backend; the last one names the response's
    claims: list[reasoning_pb2.Claim] = field(default_factory=list)
    evidence: str = ""  # the claims as "C1: quote" lines, for prompts
    hypotheses: list[reasoning_pb2.Hypothesis] = field(default_factory=list)

    @property
    def claim_ids(self) -> list[str]:
        return [c.id for c in self.claims]

    @property
    def hypothesis_ids(self) -> list[str]:
        return [h.id for h in self.hypotheses]

    @property
    def listed(self) -> str:
        return "\n".join(f"{h.id}: {h.statement}" for h in self.hypotheses)


def _text(max_chars: int = TEXT_CHARS, min_chars: int = 1) -> dict[str, Any]:
    return {"type": "string", "minLength": min_chars, "maxLength": max_chars}


def _confidence() -> dict[str, Any]:
    # Tenths as an enum: grammars enforce enums but not minimum/maximum, and small models otherwise
    # write confidences like 85 or 1683768888888888.
    return {"type": "number", "enum": [round(tenth / 10, 1) for tenth in range(11)]}


def _ids(ids: list[str], max_items: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "enum": ids}, "maxItems": max_items}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


class Analysis:
    def __init__(self, router: Router, config: AnalyzeConfig) -> None:
        self.router = router
        self.config = config

    async def _ask(self, log: PhaseLog, schema: dict[str, Any], prompt: str, tier: str,
                   session_id: str) -> tuple[dict[str, Any], str]:
        """One constrained answer, validated; one retry with the error. Returns (answer, backend name)."""
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        error = ""
        for _attempt in range(2):
            params = ChatParams(messages=messages, max_tokens=self.config.phase_max_tokens, json_schema=schema)
            try:
                result, routed = await self.router.complete(params, tier, session_id)
            except RpcError as exc:
                if exc.code == StatusCode.INVALID_ARGUMENT:  # e.g. the prompt outgrew the context
                    raise PhaseFailed(exc.message) from exc
                raise
            log.calls += 1
            log.prompt_tokens += result.prompt_tokens
            log.completion_tokens += result.completion_tokens
            try:
                answer = parse_answer(result.text, cut_off=result.finish_reason == "length")
                jsonschema.validate(answer, schema)
            except MalformedAnswer as exc:
                error = str(exc)
            except jsonschema.ValidationError as exc:
                error = f"does not match the schema: {exc.message}"
            else:
                return answer, routed.backend.name
            messages = [*messages, {"role": "assistant", "content": result.text},
                        {"role": "user", "content": f"That answer was invalid ({error}). Answer again, shorter."}]
        raise PhaseFailed(f"malformed model output twice; last: {error[:200]}")

    async def run(self, request: reasoning_pb2.AnalyzeRequest, tier: str) -> reasoning_pb2.AnalyzeResponse:
        texts, ids = self._validated(request)
        response = reasoning_pb2.AnalyzeResponse(input_chars=sum(len(t) for t in texts))
        state = _State(request, tier, texts, ids, response)
        for phase in PHASES:
            log = PhaseLog(phase.phase)
            if not phase.needs(state):
                log.errors.append(f"skipped: {phase.skipped}")
            else:
                # A failed phase reports its error; the phases after it work with what exists.
                try:
                    await phase.run(self, state, log)
                except PhaseFailed as exc:
                    log.errors.append(str(exc))
            response.phases.append(log.report())
        # Only now: correlation revises the hypotheses, and the response holds copies.
        response.hypotheses.extend(state.hypotheses)
        if state.backends:
            served = next(b for b in self.router.backends if b.name == state.backends[-1])
            response.backend, response.model = served.name, served.config.model
        return response

    async def _ask_for(self, state: _State, log: PhaseLog, schema: dict[str, Any], prompt: str) -> dict[str, Any]:
        answer, backend = await self._ask(log, schema, prompt, state.tier, state.request.session_id)
        state.backends.append(backend)
        return answer

    async def _ingest(self, state: _State, log: PhaseLog) -> None:
        """Chunk, pre-select, map (the model picks evidence), reduce (claims with provenance)."""
        request, texts, ids, response = state.request, state.texts, state.ids, state.response
        terms = term_weights(question_terms(request.question), texts, self.config.max_sentence_chars)
        chunks: list[Chunk] = []
        for index, text in enumerate(texts):
            chunks.extend(chunk_document(index, text, terms, self.config.chunk_chars, self.config.max_sentence_chars))
        response.chunks_total = len(chunks)
        response.sentences_scanned = sum(len(c.sentences) for c in chunks)
        batches = select(chunks, texts, self.config.map_calls, self.config.sentences_per_call,
                         self.config.min_sentence_score)
        response.chunks_mapped = len({(s.document, s.chunk) for batch in batches for s in batch})
        picked: list[Sentence] = []

        async def read(number: int, sentences: list[Sentence]) -> None:
            # A failed batch is one error among several: the phase goes on with the other batches.
            try:
                answer = await self._ask_for(state, log, *self._map_prompt(request.question, texts, sentences))
            except PhaseFailed as exc:
                where = ", ".join(sorted({f"{ids[s.document]}#{s.chunk}" for s in sentences}))
                log.errors.append(f"map batch {number} (chunks {where}): {exc}")
                return
            picked.extend(sentences[index - 1] for index in sorted(set(answer["relevant"])))

        # Concurrent: vLLM batches them; a one-slot llama.cpp backend queues them.
        await asyncio.gather(*(read(number, batch) for number, batch in enumerate(batches, 1)))
        state.claims = self._claims(picked, [s for batch in batches for s in batch], texts, ids)
        response.claims.extend(state.claims)
        state.evidence = "\n".join(f"{c.id}: {c.quote[: self.config.max_sentence_chars]}" for c in state.claims)

    async def _hypothesize(self, state: _State, log: PhaseLog) -> None:
        max_hypotheses = state.request.max_hypotheses or self.config.max_hypotheses
        schema = _object({"hypotheses": {
            "type": "array", "minItems": 1, "maxItems": max_hypotheses,
            "items": _object({"statement": _text(min_chars=12), "confidence": _confidence(),
                              "evidence": _ids(state.claim_ids, 4)}),
        }})
        prompt = (f"Question: {state.request.question}\n\nEvidence:\n{state.evidence}\n\n"
                  f"Propose up to {max_hypotheses} hypotheses that answer the question. For each give a "
                  "confidence between 0 and 1 and the ids of the evidence it rests on.")
        answer = await self._ask_for(state, log, schema, prompt)
        state.hypotheses = [
            reasoning_pb2.Hypothesis(id=f"H{number}", statement=item["statement"], confidence=item["confidence"],
                                     supporting_claims=list(dict.fromkeys(item["evidence"])))
            for number, item in enumerate(answer["hypotheses"], 1)
        ]

    async def _correlate(self, state: _State, log: PhaseLog) -> None:
        hypotheses, claim_ids = state.hypotheses, state.claim_ids
        schema = _object({"assessments": {
            "type": "array", "minItems": len(hypotheses), "maxItems": len(hypotheses),
            "items": _object({"hypothesis": {"type": "string", "enum": state.hypothesis_ids},
                              "supports": _ids(claim_ids, 5), "contradicts": _ids(claim_ids, 5),
                              "confidence": _confidence()}),
        }})
        prompt = (f"Question: {state.request.question}\n\nEvidence:\n{state.evidence}\n\n"
                  f"Hypotheses:\n{state.listed}\n\n"
                  "For every hypothesis list the evidence ids that support it and those that contradict "
                  "it, and your confidence in it between 0 and 1.")
        answer = await self._ask_for(state, log, schema, prompt)
        by_id = {h.id: h for h in hypotheses}
        for item in answer["assessments"]:
            hypothesis = by_id[item["hypothesis"]]
            supporting = dict.fromkeys([*hypothesis.supporting_claims, *item["supports"]])
            del hypothesis.supporting_claims[:]
            hypothesis.supporting_claims.extend(supporting)
            hypothesis.contradicting_claims.extend(
                c for c in dict.fromkeys(item["contradicts"]) if c not in supporting)
            hypothesis.confidence = item["confidence"]

    async def _counterfactuals(self, state: _State, log: PhaseLog) -> None:
        schema = _object({"counterfactuals": {
            "type": "array", "minItems": len(state.hypotheses), "maxItems": len(state.hypotheses),
            "items": _object({"hypothesis": {"type": "string", "enum": state.hypothesis_ids},
                              "condition": _text(min_chars=12), "observable": _text(min_chars=12)}),
        }})
        prompt = (f"Hypotheses:\n{state.listed}\n\nFor every hypothesis: what would have to be true for it to be "
                  "wrong (condition), and what could an analyst observe to check that (observable)?")
        answer = await self._ask_for(state, log, schema, prompt)
        state.response.counterfactuals.extend(
            reasoning_pb2.Counterfactual(hypothesis_id=item["hypothesis"], condition=item["condition"],
                                         observable=item["observable"])
            for item in answer["counterfactuals"])

    async def _synthesize(self, state: _State, log: PhaseLog) -> None:
        """From the hypotheses; when there are none (their phase failed), from the evidence alone."""
        properties: dict[str, Any] = {"summary": _text(400), "key_findings": {"type": "array", "items": _text(),
                                                                              "minItems": 1, "maxItems": 4}}
        if state.hypotheses:
            ranked = "\n".join(
                f"{h.id} (confidence {h.confidence:.2f}; supported by {', '.join(h.supporting_claims) or 'none'};"
                f" contradicted by {', '.join(h.contradicting_claims) or 'none'}): {h.statement}"
                for h in state.hypotheses)
            properties["best_hypothesis"] = {"type": "string", "enum": state.hypothesis_ids}
            prompt = (f"Question: {state.request.question}\n\nHypotheses:\n{ranked}\n\nWrite the synthesis: a "
                      "short summary answering the question, key findings, the best-supported hypothesis and "
                      "your confidence in it between 0 and 1.")
        else:
            prompt = (f"Question: {state.request.question}\n\nEvidence:\n{state.evidence}\n\nWrite the synthesis: "
                      "a short summary answering the question from the evidence, key findings, and your "
                      "confidence in the answer between 0 and 1.")
        properties["confidence"] = _confidence()
        answer = await self._ask_for(state, log, _object(properties), prompt)
        state.response.synthesis.CopyFrom(reasoning_pb2.Synthesis(
            summary=answer["summary"], key_findings=answer["key_findings"],
            best_hypothesis_id=answer.get("best_hypothesis", ""), confidence=answer["confidence"]))

    def _validated(self, request: reasoning_pb2.AnalyzeRequest) -> tuple[list[str], list[str]]:
        if not request.question.strip():
            raise RpcError(StatusCode.INVALID_ARGUMENT, "question is empty")
        if not request.documents:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "documents must not be empty")
        if request.max_hypotheses < 0 or request.max_hypotheses > 8:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "max_hypotheses must be within 0..8")
        texts = [d.text for d in request.documents]
        total = sum(len(t) for t in texts)
        if total > self.config.max_documents_chars:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED,
                           f"documents hold {total} characters; the limit is {self.config.max_documents_chars}")
        ids = [d.id or f"doc{index}" for index, d in enumerate(request.documents)]
        if len(set(ids)) != len(ids):
            raise RpcError(StatusCode.INVALID_ARGUMENT, "document ids must be unique")
        if not any(t.strip() for t in texts):
            raise RpcError(StatusCode.INVALID_ARGUMENT, "every document is empty")
        return texts, ids

    @staticmethod
    def _map_prompt(question: str, texts: list[str], sentences: list[Sentence]) -> tuple[dict[str, Any], str]:
        numbered = "\n".join(
            f"[{number}] {texts[s.document][s.start:s.end]}" for number, s in enumerate(sentences, 1))
        schema = _object({"relevant": {"type": "array", "maxItems": len(sentences),
                                       "items": {"type": "integer", "enum": list(range(1, len(sentences) + 1))}}})
        prompt = (f"Question: {question}\n\nSentences:\n{numbered}\n\n"
                  "Which sentences are evidence that helps answer the question? Give their numbers.")
        return schema, prompt

    def _claims(self, picked: list[Sentence], candidates: list[Sentence], texts: list[str],
                ids: list[str]) -> list[reasoning_pb2.Claim]:
        """Model-picked sentences by score, topped up to MIN_CLAIMS from the candidates, max_claims in all."""
        by_model = sorted(set(picked), key=lambda s: (-s.score, s.document, s.start))
        chosen = [(s, True) for s in by_model[: self.config.max_claims]]
        if len(chosen) < MIN_CLAIMS:
            extra = sorted(set(candidates) - set(picked), key=lambda s: (-s.score, s.document, s.start))
            chosen += [(s, False) for s in extra[: MIN_CLAIMS - len(chosen)]]
        return [
            reasoning_pb2.Claim(
                id=f"C{number}", quote=texts[s.document][s.start:s.end], score=s.score, model_selected=selected,
                provenance=reasoning_pb2.Provenance(document_id=ids[s.document], chunk=s.chunk, start=s.start,
                                                    end=s.end),
            )
            for number, (s, selected) in enumerate(chosen, 1)
        ]


@dataclass(frozen=True)
class _Phase:
    phase: reasoning_pb2.Phase.ValueType
    run: Callable[[Analysis, _State, PhaseLog], Awaitable[None]]
    # Skipped, with the error "skipped: <skipped>", when what it builds on is missing.
    needs: Callable[[_State], bool] = lambda state: True
    skipped: str = ""


def _has_claims(state: _State) -> bool:
    return bool(state.claims)


def _has_hypotheses(state: _State) -> bool:
    return bool(state.hypotheses)


# In order: each phase reads what the ones before it left in _State.
PHASES = (
    _Phase(reasoning_pb2.PHASE_INGESTION, Analysis._ingest),
    _Phase(reasoning_pb2.PHASE_HYPOTHESES, Analysis._hypothesize,
           needs=_has_claims, skipped="no evidence was found in the input"),
    _Phase(reasoning_pb2.PHASE_CORRELATION, Analysis._correlate, needs=_has_hypotheses, skipped="no hypotheses"),
    _Phase(reasoning_pb2.PHASE_COUNTERFACTUALS, Analysis._counterfactuals, needs=_has_hypotheses,
           skipped="no hypotheses"),
    # Without hypotheses (their phase failed) it still summarises the evidence.
    _Phase(reasoning_pb2.PHASE_SYNTHESIS, Analysis._synthesize,
           needs=lambda state: bool(state.hypotheses or state.claims), skipped="no hypotheses and no evidence"),
)
