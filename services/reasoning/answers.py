r"""Reading a schema-constrained model answer: the parser accepts every text the engine's grammar admits.

The engine turns the JSON schema into a grammar. llama.cpp's converter (the one llama-cpp-python's
server runs, `llama_cpp.llama_grammar.json_schema_to_gbnf`) writes a string character as

    char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})

so any character but `"` and backslash may appear raw inside a string: a newline, a tab, NUL, any
control character; and `\uD800` (half a surrogate pair) is a valid escape. Python's `json.loads`
refuses raw U+0000..U+001F inside strings unless `strict=False`, and with `strict=False` it accepts
exactly that `char` rule (it never refused other characters, and its escapes are the same set).
Numbers, literals, arrays and objects in the grammar are plain JSON with at most single spaces
between tokens. Hence every text the grammar admits for Analyze's schemas parses here (tested by
sampling the grammar itself: tests/test_answers.py). We close the gap on the parser's side rather
than with a schema `pattern` forbidding control characters: the parser's side holds whatever the
engine (a pattern is honoured, ignored or translated by each engine's own regex subset, and in
llama.cpp's converter a pattern replaces minLength/maxLength), and it keeps the escapes (a quoted
word inside a statement) that a pattern excluding `"` and backslash would forbid.

After parsing, string values are normalised (control characters and whitespace runs become one
space, ends stripped; lone surrogates, which protobuf cannot encode, become U+FFFD) and only then
validated against the schema, so minLength counts what is kept.

Refused, each with a message that says what was wrong (for the one retry, then the phase's report):
no JSON, or text after the JSON value (engines without grammar support); NaN and Infinity; and an
answer cut off at max_tokens before the value was complete (a complete one is accepted). Two more
are admitted only by the grammar's generic rules, which Analyze's schemas never use (every number
there is an enum, every object has fixed properties): numbers beyond float range (1e309 would
become inf, which JSON cannot carry back out) and a repeated key (which value did the model mean?).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0, DEL, C1
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # only lone ones survive json's decoding of \uXXXX pairs
_JSON_SPACE = " \t\n\r"
SHOWN_CHARS = 40  # of unexpected text, in error messages


class MalformedAnswer(ValueError):
    """The answer is not one JSON value, or holds what the grammar cannot have produced."""


def _refuse_constant(name: str) -> Any:
    raise MalformedAnswer(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise MalformedAnswer(f"number {literal[:SHOWN_CHARS]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    for key, value in pairs:
        if key in answer:
            raise MalformedAnswer(f"duplicate key {key[:SHOWN_CHARS]!r}")
        answer[key] = value
    return answer


_DECODER = json.JSONDecoder(strict=False, parse_constant=_refuse_constant, parse_float=_finite,
                            object_pairs_hook=_unique_keys)


def clean_text(text: str) -> str:
    """One line of printable text: control characters and whitespace runs become one space."""
    return " ".join(_SURROGATE.sub("\ufffd", _CONTROL.sub(" ", text)).split())


def normalised(value: Any) -> Any:
    """`value` with every string value cleaned (keys are left alone: the schema names them)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [normalised(item) for item in value]
    if isinstance(value, dict):
        return {key: normalised(item) for key, item in value.items()}
    return value


def parse_answer(text: str, *, cut_off: bool = False) -> Any:
    """The one JSON value in `text`, its strings normalised. `cut_off`: the engine stopped at
    max_tokens (a complete value is still accepted). Raises MalformedAnswer saying why not."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    if start == len(text):
        raise MalformedAnswer("cut off at max_tokens before any JSON" if cut_off else "empty answer")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except MalformedAnswer:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer beyond Python's digit limit
        if cut_off:
            raise MalformedAnswer(f"cut off at max_tokens before the JSON was complete ({exc})") from None
        raise MalformedAnswer(f"not JSON: {exc}") from None
    rest = text[end:].strip()
    if rest:
        raise MalformedAnswer(f"text after the JSON value at char {end}: {rest[:SHOWN_CHARS]!r}")
    return normalised(value)
