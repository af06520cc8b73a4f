"""The parser of constrained answers accepts what the engine's grammar admits (raw control
characters in strings above all) and refuses the rest with a message that says what was wrong."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bev.reasoning.v1 import reasoning_pb2
from services.reasoning.answers import MalformedAnswer, clean_text, parse_answer
from services.reasoning.tests.analyze_cases import SMOLLM2_HYPOTHESES
from services.reasoning.tests.gbnf import Grammar


def _schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def test_the_answer_smollm2_wrote_is_read() -> None:
    with pytest.raises(ValueError, match="Invalid control character"):
        json.loads(SMOLLM2_HYPOTHESES)
    answer = parse_answer(SMOLLM2_HYPOTHESES)
    assert answer["hypotheses"][1]["statement"].startswith("1.1} }} The evidence is a fake update campaign")
    assert [h["confidence"] for h in answer["hypotheses"]] == [0.9, 1.0]


@pytest.mark.parametrize("raw", ["\n", "\t", "\r", "\r\n", "\x00", "\x07", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"])
def test_raw_control_characters_inside_strings_are_accepted_and_become_a_space(raw: str) -> None:
    answer = parse_answer(f'{{"statement": "first line{raw}second line", "ids": ["C1"]}}')
    assert answer == {"statement": "first line second line", "ids": ["C1"]}


def test_every_c0_control_character_is_accepted() -> None:
    every = "".join(chr(code) for code in range(0x20))
    assert parse_answer(f'{{"s": "a{every}b"}}') == {"s": "a b"}


def test_strings_are_one_clean_line() -> None:
    assert parse_answer('{"s": "  \\n\\tindented\\r\\n  and   spaced \\u0000 "}') == {"s": "indented and spaced"}
    assert parse_answer('{"s": "\\n\\n\\n"}') == {"s": ""}  # then minLength refuses it, with a schema error
    assert clean_text("quote \" and \\ and \u00e9 \u4e2d \U0001f600 stay") == "quote \" and \\ and \u00e9 \u4e2d \U0001f600 stay"


def test_escapes_the_grammar_admits_are_decoded() -> None:
    text = r'{"s": "q\" b\\ s\/ \b\f\n\r\t \u0041 \ud83d\ude00"}'
    assert parse_answer(text) == {"s": 'q" b\\ s/ A \U0001f600'}


def test_a_lone_surrogate_escape_becomes_a_replacement_character_protobuf_can_encode() -> None:
    with pytest.raises(UnicodeEncodeError):  # what json.loads alone would hand to the response
        reasoning_pb2.Hypothesis(statement=json.loads(r'"a\ud800b"')).SerializeToString()
    answer = parse_answer(r'{"s": "a\ud800b \udfff"}')
    assert answer == {"s": "a\ufffdb \ufffd"}
    reasoning_pb2.Hypothesis(statement=answer["s"]).SerializeToString()


def test_whitespace_around_the_value_is_accepted() -> None:
    assert parse_answer(' \n\t{ "a" : [ 1 , 2 ] } \n') == {"a": [1, 2]}


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty answer"),
    ("  \n ", "empty answer"),
    ('{"a": 1} and some more words', "text after the JSON value at char 8: 'and some more words'"),
    ('{"a": 1}{"a": 2}', "text after the JSON value"),
    ('{"a": 1}```', "text after the JSON value"),
    ('Sure! {"a": 1}', "not JSON: Expecting value"),
    ('```json\n{"a": 1}\n```', "not JSON"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": Infinity}', "Infinity is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": 1e309}', "number 1e309 is out of range"),
    ('{"a": -2.5E+400}', "number -2.5E+400 is out of range"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"h": [{"id": "H1", "id": "H2"}]}', "duplicate key 'id'"),
    ('{"s": "bad \\x escape"}', "not JSON: Invalid \\escape"),
    ("{'a': 1}", "not JSON"),
    ('{"a": 1,}', "not JSON"),
    ('{"a": 01}', "not JSON"),
    ('[1, 2', "not JSON"),
])
def test_what_the_grammar_does_not_admit_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(MalformedAnswer) as refused:
        parse_answer(text)
    assert says in str(refused.value)


def test_tiny_numbers_are_zero_not_an_error() -> None:
    assert parse_answer('{"a": 1e-400, "b": 0.1}') == {"a": 0.0, "b": 0.1}


def test_an_answer_cut_off_at_max_tokens_says_so() -> None:
    with pytest.raises(MalformedAnswer, match="cut off at max_tokens before the JSON was complete"):
        parse_answer('{"hypotheses": [{"statement": "The actor behind the', cut_off=True)
    with pytest.raises(MalformedAnswer, match="cut off at max_tokens before any JSON"):
        parse_answer(" ", cut_off=True)
    # complete exactly at the limit: accepted
    assert parse_answer('{"a": 1}', cut_off=True) == {"a": 1}


# The schemas Analyze sends, in miniature: free text with length bounds, enums of ids and of tenths,
# objects with fixed properties.
ANALYZE_SCHEMAS = [
    _schema({"relevant": {"type": "array", "maxItems": 4, "items": {"type": "integer", "enum": [1, 2, 3, 4]}}}),
    _schema({"hypotheses": {"type": "array", "minItems": 1, "maxItems": 2, "items": _schema({
        "statement": {"type": "string", "minLength": 12, "maxLength": 60},
        "confidence": {"type": "number", "enum": [round(t / 10, 1) for t in range(11)]},
        "evidence": {"type": "array", "items": {"type": "string", "enum": ["C1", "C2"]}, "maxItems": 4}})}}),
    _schema({"summary": {"type": "string", "minLength": 1, "maxLength": 80},
             "key_findings": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 40},
                              "minItems": 1, "maxItems": 4}}),
]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return []


@pytest.mark.parametrize("schema", ANALYZE_SCHEMAS, ids=["map", "hypotheses", "synthesis"])
def test_every_text_the_engine_grammar_admits_parses(schema: dict[str, Any]) -> None:
    """Texts sampled from the very grammar llama.cpp builds from the schema, their strings full of raw
    control characters, escapes and lone surrogates: none is refused, and what is kept is clean."""
    grammar = Grammar.for_schema(schema)
    rng = random.Random(20260314)
    refused_by_json_loads = 0
    for _ in range(200):
        text = grammar.sample(rng)
        answer = parse_answer(text)
        assert answer.keys() == json.loads(text, strict=False).keys()
        try:
            json.loads(text)
        except ValueError:
            refused_by_json_loads += 1
        for string in _strings(answer):
            assert string == string.strip() and "  " not in string
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in string)
            string.encode()  # protobuf strings must be valid UTF-8
    if schema is not ANALYZE_SCHEMAS[0]:  # the map schema has no strings the model writes
        assert refused_by_json_loads > 100  # the samples did exercise what strict json.loads refuses


def test_the_grammar_generic_rules_admit_only_two_things_that_are_refused() -> None:
    """Analyze's schemas never use them, but a bare number or object lets the grammar write a
    number beyond float range (1e309 would be inf) or repeat a key: both refused, saying so."""
    grammar = Grammar.for_schema(_schema({"n": {"type": "number"}, "s": {"type": "string"}, "o": {"type": "object"}}))
    rng = random.Random(7)
    outcomes = {"parsed": 0, "out of range": 0, "duplicate key": 0}
    for _ in range(150):
        try:
            parse_answer(grammar.sample(rng))
            outcomes["parsed"] += 1
        except MalformedAnswer as exc:
            kind = next(k for k in outcomes if k in str(exc))  # StopIteration: any other refusal is a bug
            outcomes[kind] += 1
    assert outcomes["parsed"] > 50
