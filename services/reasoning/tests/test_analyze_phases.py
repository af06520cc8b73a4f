"""Analyze's phases against a scripted engine (fast, no model): answers as SmolLM2 writes them are
read, a phase that fails says why in its own report, and the phases after it run with what exists."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import pytest_asyncio

from bev.reasoning.v1 import reasoning_pb2
from bev.vocab import Tier
from services.reasoning.analysis import Analysis
from services.reasoning.backends import Backend, ChatParams, Completion
from services.reasoning.router import Routed, Router
from services.reasoning.settings import AnalyzeConfig, BackendConfig
from services.reasoning.tests.analyze_cases import CASES, SMOLLM2_HYPOTHESES

Answer = tuple[str, str]  # (text, finish_reason)
Script = dict[str, list[Answer]]  # phase (the schema's first property) -> answers, in order; the last repeats

GOOD: Script = {
    "relevant": [('{"relevant": [1]}', "stop")],
    "hypotheses": [(SMOLLM2_HYPOTHESES, "stop")],  # raw newline inside a statement
    "assessments": [('{"assessments": [{"hypothesis": "H1", "supports": [], "contradicts": [], "confidence": 0.3},'
                     ' {"hypothesis": "H2", "supports": ["C1"], "contradicts": [], "confidence": 0.7}]}', "stop")],
    "counterfactuals": [('{"counterfactuals": [{"hypothesis": "H1", "condition": "the wallet\tbelongs to\nsomeone '
                         'else", "observable": "payments\r\nfrom other groups"}, {"hypothesis": "H2", "condition": '
                         '"no overlap in the loader", "observable": "different obfuscation"}]}', "stop")],
    "summary": [('{"summary": "VELVET TEMPEST\n\nruns it; victims pay in BTC", "key_findings": ["4.5 BTC\tdemanded"],'
                 ' "best_hypothesis": "H2", "confidence": 0.6}', "stop")],
}
# synthesis when the hypotheses phase failed: from the evidence, without a best hypothesis
FROM_EVIDENCE: Answer = ('{"summary": "Victims pay 4.5 BTC over a Tor chat", "key_findings": ["LockPhantom"],'
                         ' "confidence": 0.4}', "stop")


class ScriptedRouter(Router):
    """One backend that answers each phase from a script, and remembers what it was asked."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        backend = Backend(BackendConfig(name="scripted", tier=Tier.FAST, url="http://127.0.0.1:9/v1",
                                        model="scripted-model", kind="llamacpp"), http)
        super().__init__([backend], Tier.FAST)
        self.script: Script = {}
        self.asked: list[ChatParams] = []

    async def complete(self, params: ChatParams, tier: Tier | str = "", session_id: str = "",
                       model: str = "") -> tuple[Completion, Routed]:
        self.asked.append(params)
        assert params.json_schema is not None
        phase = next(iter(params.json_schema["properties"]))
        answers = self.script[phase]
        text, finish = answers.pop(0) if len(answers) > 1 else answers[0]
        return Completion(text, finish, 100, 20, "scripted-model"), Routed(self.backends[0], fell_back=False)

    def phase_calls(self, phase: str) -> list[ChatParams]:
        return [p for p in self.asked if p.json_schema is not None and phase in p.json_schema["properties"]]


@pytest_asyncio.fixture
async def router() -> AsyncIterator[ScriptedRouter]:
    async with httpx.AsyncClient() as http:
        yield ScriptedRouter(http)


async def _analyze(router: ScriptedRouter, change: Callable[[Script], None] = lambda script: None
                   ) -> reasoning_pb2.AnalyzeResponse:
    router.script = {phase: list(answers) for phase, answers in GOOD.items()}
    change(router.script)
    case = CASES[0]
    request = reasoning_pb2.AnalyzeRequest(
        question=case.question, max_hypotheses=2,
        documents=[reasoning_pb2.Document(id=doc_id, text=text) for doc_id, text in case.documents])
    response = await Analysis(router, AnalyzeConfig()).run(request, "fast")
    response.SerializeToString()  # protobuf can encode every string in it
    return response


def _errors(response: reasoning_pb2.AnalyzeResponse) -> dict[str, str]:
    return {reasoning_pb2.Phase.Name(p.phase).removeprefix("PHASE_").lower(): p.error for p in response.phases}


async def test_answers_with_raw_control_characters_complete_every_phase(router: ScriptedRouter) -> None:
    response = await _analyze(router)
    assert _errors(response) == {"ingestion": "", "hypotheses": "", "correlation": "", "counterfactuals": "",
                                 "synthesis": ""}
    assert [h.statement for h in response.hypotheses][1].startswith("1.1} }} The evidence is")
    assert response.counterfactuals[0].condition == "the wallet belongs to someone else"
    assert response.synthesis.summary == "VELVET TEMPEST runs it; victims pay in BTC"
    assert list(response.synthesis.key_findings) == ["4.5 BTC demanded"]
    assert response.synthesis.best_hypothesis_id == "H2"
    assert len(router.phase_calls("hypotheses")) == 1  # no retry was needed


async def test_a_failed_hypotheses_phase_says_why_and_synthesis_still_summarises_the_evidence(
        router: ScriptedRouter) -> None:
    def cut_off(script: Script) -> None:
        script["hypotheses"] = [('{"hypotheses": [{"statement": "The group behind the fake update', "length")]
        script["summary"] = [FROM_EVIDENCE]

    response = await _analyze(router, cut_off)
    errors = _errors(response)
    assert errors["ingestion"] == ""
    assert errors["hypotheses"].startswith("malformed model output twice; last: cut off at max_tokens")
    assert errors["correlation"] == errors["counterfactuals"] == "skipped: no hypotheses"
    assert errors["synthesis"] == ""
    assert not response.hypotheses and response.claims
    assert response.synthesis.summary == "Victims pay 4.5 BTC over a Tor chat"
    assert response.synthesis.best_hypothesis_id == ""
    synthesis = router.phase_calls("summary")[0]
    assert synthesis.json_schema is not None and "best_hypothesis" not in synthesis.json_schema["properties"]
    assert "Evidence:\nC1: " in synthesis.messages[-1]["content"]
    retry = router.phase_calls("hypotheses")[1].messages[-1]["content"]  # the model was told what was wrong
    assert retry.startswith("That answer was invalid (cut off at max_tokens")


async def test_a_failed_middle_phase_does_not_stop_the_ones_after_it(router: ScriptedRouter) -> None:
    def broken(script: Script) -> None:
        script["assessments"] = [('{"assessments": []} and then some prose', "stop")]

    response = await _analyze(router, broken)
    errors = _errors(response)
    assert errors["correlation"].startswith("malformed model output twice; last: text after the JSON value")
    assert errors["ingestion"] == errors["hypotheses"] == errors["counterfactuals"] == errors["synthesis"] == ""
    assert len(response.hypotheses) == 2 and len(response.counterfactuals) == 2
    assert response.synthesis.best_hypothesis_id == "H2"


@pytest.mark.parametrize(("answer", "says"), [
    ('{"hypotheses": [{"statement": "x", "confidence": 0.5, "evidence": []}]}', "does not match the schema"),
    ('{"hypotheses": [{"statement": "\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n", "confidence": 0.5, "evidence": []}]}',
     "does not match the schema: '' is too short"),
    ('{"hypotheses": [], "hypotheses": []}', "duplicate key 'hypotheses'"),
    ('{"hypotheses": [{"statement": "a long enough one", "confidence": NaN, "evidence": []}]}', "NaN is not"),
    ("", "empty answer"),
])
async def test_each_way_a_phase_answer_is_refused_is_named_in_the_phase_report(
        router: ScriptedRouter, answer: str, says: str) -> None:
    def bad(script: Script) -> None:
        script["hypotheses"] = [(answer, "stop")]
        script["summary"] = [FROM_EVIDENCE]

    response = await _analyze(router, bad)
    assert says in _errors(response)["hypotheses"]
    assert _errors(response)["synthesis"] == ""


async def test_a_lone_surrogate_does_not_break_the_response(router: ScriptedRouter) -> None:
    def surrogate(script: Script) -> None:
        script["hypotheses"] = [('{"hypotheses": [{"statement": "paid to \\ud800 a wallet", "confidence": 0.5, '
                                 '"evidence": ["C1"]}, {"statement": "second explanation", "confidence": 0.5, '
                                 '"evidence": []}]}', "stop")]

    response = await _analyze(router, surrogate)
    assert response.hypotheses[0].statement == "paid to \ufffd a wallet"
    assert all(not error for error in _errors(response).values())
