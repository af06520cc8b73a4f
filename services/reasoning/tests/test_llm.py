"""Real SmolLM2-135M generation through llama.cpp (CPU, a few seconds in all)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.reasoning.llm import Generation, LlamaCppModel

PROMPT = "List three malware families:\n1."
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["malicious", "benign", "unknown"]},
        "confidence": {"type": "number"},
        "reasons": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
    "required": ["verdict", "confidence", "reasons"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    started = time.perf_counter()
    loaded = LlamaCppModel.load()
    print(f"\nSmolLM2 load: {time.perf_counter() - started:.2f} s")
    yield loaded


def test_metadata(model: LlamaCppModel) -> None:
    assert model.name == "SmolLM2-135M-Instruct.Q4_1"
    assert model.context_length == 2048
    assert model.count_tokens("The capital of France is") == 5


def test_greedy_generation_is_deterministic(model: LlamaCppModel) -> None:
    first = model.generate(PROMPT, max_tokens=24)
    assert first.text.strip()
    assert first.prompt_tokens > 0 and first.completion_tokens > 0
    assert first.finish_reason in ("stop", "length")
    assert model.generate(PROMPT, max_tokens=24) == first


def test_matches_llama_cpp_python_reference(model: LlamaCppModel) -> None:
    """Our decode loop gives exactly what create_completion / create_chat_completion give."""
    llama = model._llama  # the reference implementation, same weights and context
    ours = model.generate(PROMPT, max_tokens=32)
    ref = llama.create_completion(PROMPT, max_tokens=32, temperature=0.0, repeat_penalty=1.1)
    assert isinstance(ref, dict)
    assert ours.text == ref["choices"][0]["text"]
    assert (ours.prompt_tokens, ours.completion_tokens) == (
        ref["usage"]["prompt_tokens"],
        ref["usage"]["completion_tokens"],
    )

    messages = [{"role": "user", "content": "Name three colors."}]
    ours = model.chat(messages, max_tokens=48)
    ref_chat = llama.create_chat_completion(messages, max_tokens=48, temperature=0.0)  # type: ignore[arg-type]
    assert isinstance(ref_chat, dict)
    assert ours.text == ref_chat["choices"][0]["message"]["content"]
    assert ours.finish_reason == ref_chat["choices"][0]["finish_reason"] == "stop"
    assert ours.completion_tokens == ref_chat["usage"]["completion_tokens"]


def test_stream_concatenates_to_generate(model: LlamaCppModel) -> None:
    expected = model.generate(PROMPT, max_tokens=32)
    stream = model.stream(PROMPT, max_tokens=32)
    with pytest.raises(RuntimeError, match="not finished"):
        _ = stream.result
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == expected.text
    assert stream.result == expected


def test_stream_multibyte_text(model: LlamaCppModel) -> None:
    prompt = "日本語で答えてください。東京は"
    pieces = list(model.stream(prompt, max_tokens=30))
    assert "".join(pieces) == model.generate(prompt, max_tokens=30).text
    assert "\ufffd" not in "".join(pieces[:-1])  # characters split across tokens are reassembled


def test_max_tokens_is_a_hard_cap(model: LlamaCppModel) -> None:
    result = model.generate("Once upon a time", max_tokens=5)
    assert result.completion_tokens == 5
    assert result.finish_reason == "length"
    assert model.generate("日本語で答えてください。東京は", max_tokens=3).completion_tokens == 3


def test_stop_strings(model: LlamaCppModel) -> None:
    result = model.generate("Count: one, two, three, four,", max_tokens=30, stop=[" six"])
    assert result.text == " five,"
    assert result.finish_reason == "stop"
    stream = model.stream("Count: one, two, three, four,", max_tokens=30, stop=[" six"])
    assert "".join(stream) == result.text
    assert stream.result == result


def test_chat_and_chat_stream(model: LlamaCppModel) -> None:
    messages = [
        {"role": "system", "content": "You are a concise threat-intelligence assistant."},
        {"role": "user", "content": "What is phishing? One sentence."},
    ]
    answer = model.chat(messages, max_tokens=48)
    assert answer.text.strip()
    assert "<|im_end|>" not in answer.text
    stream = model.chat_stream(messages, max_tokens=48)
    assert "".join(stream) == answer.text
    assert stream.result == answer


def test_json_schema_constrained_chat(model: LlamaCppModel) -> None:
    messages = [{"role": "user", "content": "Is the domain evil-payload.xyz malicious? Answer in JSON."}]
    result = model.chat(messages, max_tokens=128, json_schema=VERDICT_SCHEMA)
    assert result.finish_reason == "stop"
    parsed = json.loads(result.text)
    assert set(parsed) == {"verdict", "confidence", "reasons"}
    assert parsed["verdict"] in ("malicious", "benign", "unknown")
    assert isinstance(parsed["confidence"], int | float)
    assert isinstance(parsed["reasons"], list) and len(parsed["reasons"]) <= 2
    assert all(isinstance(reason, str) for reason in parsed["reasons"])


def test_sampling_is_reproducible_with_the_seed(model: LlamaCppModel) -> None:
    first = model.generate("Once upon a time", max_tokens=16, temperature=0.9)
    assert model.generate("Once upon a time", max_tokens=16, temperature=0.9) == first


def test_bad_arguments_fail_at_the_call(model: LlamaCppModel) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        model.stream(PROMPT, max_tokens=0)
    with pytest.raises(ValueError, match="context window"):
        model.generate("word " * 3000)
    with pytest.raises(ValueError, match="role"):
        model.chat([{"content": "hi"}])
    with pytest.raises(ValueError, match="empty"):
        model.chat([])
    with pytest.raises(ValueError, match="json_schema cannot be turned into"):
        model.chat([{"role": "user", "content": "hi"}], json_schema={"type": "bogus"})


def test_concurrent_calls_are_serialised(model: LlamaCppModel) -> None:
    prompts = [PROMPT, "Once upon a time", "The capital of France is"]
    expected = [model.generate(prompt, max_tokens=12) for prompt in prompts]
    results: dict[int, Generation] = {}

    def work(index: int) -> None:
        results[index] = model.generate(prompts[index], max_tokens=12)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[index] for index in range(len(prompts))] == expected


def test_closing_a_stream_early_releases_the_model(model: LlamaCppModel) -> None:
    with model.stream("Once upon a time", max_tokens=40) as stream:
        next(stream)
    done = threading.Event()

    def after() -> None:
        model.generate("Hi", max_tokens=2)
        done.set()

    threading.Thread(target=after, daemon=True).start()
    assert done.wait(timeout=30), "the model stayed locked after the stream was closed"


def test_throughput(model: LlamaCppModel) -> None:
    messages = [
        {"role": "user", "content": "Write a short story about a detective who solves a cyber crime."}
    ]
    model.chat(messages, max_tokens=8)  # warm-up
    started = time.perf_counter()
    result = model.chat(messages, max_tokens=128)
    elapsed = time.perf_counter() - started
    print(
        f"\nSmolLM2 decode: {result.completion_tokens / elapsed:.0f} tokens/s "
        f"({result.completion_tokens} tokens, prompt {result.prompt_tokens}, {elapsed:.2f} s)"
    )
    assert result.completion_tokens > 16
