"""What no request may carry, whatever its route: checked on the raw request before a route reads it.

JSON that Python's parser takes but no service can: NaN and Infinity (not JSON at all, but
`json.loads` accepts them), numbers that overflow a double (1e309 parses as inf), integers longer
than Python converts, and strings with a NUL character (PostgreSQL cannot store it) or a lone
surrogate such as "\\ud800" (not Unicode text: protobuf refuses to encode it). The same
characters in a path, a query parameter or a form field are refused too. Each is the caller's
error, answered with 400 and the reason, instead of failing deep inside a service.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


class Refused(ValueError):
    """A value in a request that the API refuses, with the reason."""


def text_problem(text: str, where: str) -> str | None:
    """Why `text` (found at `where`) is refused, or None when it is fine."""
    found = _BAD_CHARACTER.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return f"{where} contains a NUL character (\\u0000); the API does not take NUL in text"
    return (f"{where} contains a lone surrogate (\\u{ord(found.group()):04x}), which is not Unicode text; "
            "send a character as one code point or as a complete surrogate pair")


def _refuse_constant(name: str) -> Any:
    raise Refused(f"{name} is not a JSON number; send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"the number {_clip(text)} is out of range for a double (at most about 1.8e308)")
    return value


def _integer(text: str) -> int:
    # Fields bound their own integers (422 past the bound); free-form JSON (graph query parameters,
    # JSON schemas) goes on as JSON text, so a big integer there is the receiving service's to judge.
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits())
        raise Refused(f"the integer {_clip(text)} has too many digits") from None


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if key.isidentifier() else f"{parent}[{json.dumps(key)}]"


def json_problem(body: bytes) -> str | None:
    """Why the JSON document `body` is refused, or None when it is fine. None as well for a body
    that is not JSON at all: the route's own validation answers that (with where it failed)."""
    try:
        document = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite, parse_int=_integer)
    except Refused as exc:
        return str(exc)
    except json.JSONDecodeError:
        return None
    except UnicodeDecodeError:
        return "the body is not UTF-8 text"
    except RecursionError:
        return "the body nests arrays or objects too deeply"
    # Iterative: a body nested as deep as the parser allows must not exhaust the stack here either.
    pending: list[tuple[str, Any]] = [("$", document)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            problem = text_problem(value, f"the string at {where}")
        elif isinstance(value, dict):
            problem = next((p for key in value if (p := text_problem(key, f"a key in {where}"))), None)
            pending.extend((_path(where, key), item) for key, item in value.items())
        elif isinstance(value, list):
            problem = None
            pending.extend((_path(where, index), item) for index, item in enumerate(value))
        else:
            problem = None
        if problem:
            return problem
    return None


def parameters_problem(path: str, parameters: Iterable[tuple[str, str]], kind: str = "query parameter") -> str | None:
    """Why a request's path or one of its (name, value) parameters is refused, or None."""
    if problem := text_problem(path, "the path"):
        return problem
    for name, value in parameters:
        label = repr(name.encode("unicode_escape").decode("ascii"))
        if problem := text_problem(name, f"a {kind} name") or text_problem(value, f"the {kind} {label}"):
            return problem
    return None
