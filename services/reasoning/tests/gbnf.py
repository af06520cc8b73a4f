"""Random texts from a GBNF grammar: what a constrained engine may emit, worst case.

Covers the GBNF that llama.cpp's JSON-schema converter writes (`llama_cpp.llama_grammar.
json_schema_to_gbnf`): literals, character classes, rule references, groups, alternatives and the
`?`, `*`, `+` repetitions. Character classes are sampled from a pool that is mostly what a model
should not write (every C0 control character, DEL, C1) plus printable and non-BMP characters.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

POOL = [chr(c) for c in range(0x00, 0xA0)] + ["\u00e9", "\u2028", "\u200b", "\ufeff", "\u4e2d", "\U0001f600"]
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
MAX_DEPTH = 12
_NAME = re.compile(r"[a-zA-Z0-9-]+")


@dataclass(frozen=True)
class _Node:
    kind: str  # lit, class, ref, seq, alt, opt, star, plus
    text: str = ""
    negated: bool = False
    ranges: tuple[tuple[str, str], ...] = ()
    items: tuple[_Node, ...] = ()


class _Parser:
    def __init__(self, body: str) -> None:
        self.body = body
        self.at = 0

    def _skip(self) -> None:
        while self.at < len(self.body) and self.body[self.at] == " ":
            self.at += 1

    def _peek(self) -> str:
        self._skip()
        return self.body[self.at] if self.at < len(self.body) else ""

    def _char(self) -> str:
        char = self.body[self.at]
        self.at += 1
        if char != "\\":
            return char
        escaped = self.body[self.at]
        self.at += 1
        if escaped in "xuU":
            digits = {"x": 2, "u": 4, "U": 8}[escaped]
            code = self.body[self.at:self.at + digits]
            self.at += digits
            return chr(int(code, 16))
        return _ESCAPES.get(escaped, escaped)

    def alternatives(self) -> _Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else _Node("alt", items=tuple(options))

    def _sequence(self) -> _Node:
        items: list[_Node] = []
        while self._peek() not in ("", "|", ")"):
            item = self._primary()
            while self._peek() in ("?", "*", "+"):
                item = _Node({"?": "opt", "*": "star", "+": "plus"}[self.body[self.at]], items=(item,))
                self.at += 1
            items.append(item)
        return _Node("seq", items=tuple(items))

    def _primary(self) -> _Node:
        first = self._peek()
        if first == '"':
            self.at += 1
            text = ""
            while self.body[self.at] != '"':
                text += self._char()
            self.at += 1
            return _Node("lit", text=text)
        if first == "[":
            self.at += 1
            negated = self.body[self.at] == "^"
            self.at += negated
            ranges: list[tuple[str, str]] = []
            while self.body[self.at] != "]":
                low = self._char()
                high = low
                if self.body[self.at] == "-" and self.body[self.at + 1] != "]":
                    self.at += 1
                    high = self._char()
                ranges.append((low, high))
            self.at += 1
            return _Node("class", negated=negated, ranges=tuple(ranges))
        if first == "(":
            self.at += 1
            inner = self.alternatives()
            assert self._peek() == ")", self.body[self.at:]
            self.at += 1
            return inner
        name = _NAME.match(self.body, self.at)
        assert name, f"unexpected GBNF at {self.body[self.at:]!r}"
        self.at = name.end()
        return _Node("ref", text=name.group())


class Grammar:
    def __init__(self, gbnf: str) -> None:
        self.rules: dict[str, _Node] = {}
        for line in gbnf.splitlines():
            name, body = line.split(" ::= ", 1)
            parser = _Parser(body)
            self.rules[name] = parser.alternatives()
            assert parser.at == len(body.rstrip()), f"{name}: unparsed {body[parser.at:]!r}"

    @classmethod
    def for_schema(cls, schema: dict[str, Any]) -> Grammar:
        return cls(json_schema_to_gbnf(json.dumps(schema)))

    def sample(self, rng: random.Random, rule: str = "root") -> str:
        out: list[str] = []
        self._emit(self.rules[rule], rng, out, 0)
        return "".join(out)

    def _emit(self, node: _Node, rng: random.Random, out: list[str], depth: int) -> None:
        """`depth`: rule references followed; past MAX_DEPTH repetitions take their minimum, so the
        grammar's recursive rules (a value inside an object inside a value) end."""
        if node.kind == "lit":
            out.append(node.text)
        elif node.kind == "class":
            def inside(char: str) -> bool:
                return any(low <= char <= high for low, high in node.ranges)
            out.append(rng.choice([c for c in POOL if inside(c) != node.negated]))
        elif node.kind == "ref":
            self._emit(self.rules[node.text], rng, out, depth + 1)
        elif node.kind == "seq":
            for item in node.items:
                self._emit(item, rng, out, depth)
        elif node.kind == "alt":
            self._emit(rng.choice(node.items), rng, out, depth)
        else:
            low = {"opt": 0, "star": 0, "plus": 1}[node.kind]
            high = low if depth > MAX_DEPTH else 1 if node.kind == "opt" else 3
            # optional parts are taken more often than not: long strings, as a rambling model writes them
            count = low + sum(rng.random() < 0.8 for _ in range(high - low))
            for _ in range(count):
                self._emit(node.items[0], rng, out, depth)
