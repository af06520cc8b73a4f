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
from collections.abc import Callable, Iterable
from typing import Any

from fastapi.routing import APIRoute
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.routes.common import error_response

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


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestChecks:
    """The body limit and the checks above, in front of the app: 413 for a body over its path's
    limit (Content-Length checked before reading; a chunked body counted as it arrives), then 400
    for a path, query parameter, JSON body or form field that no service can take. `route_for`
    names the API route a request will reach (None: no route, the router answers 404/405); the
    body of a route that takes none is not read here."""

    def __init__(self, app: ASGIApp, route_for: Callable[[Scope], APIRoute | None], max_body_bytes: int,
                 max_upload_bytes: int, upload_paths: Iterable[str]) -> None:
        self.app = app
        self.route_for = route_for
        self.max_body_bytes, self.max_upload_bytes = max_body_bytes, max_upload_bytes
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.max_upload_bytes if path in self.upload_paths else self.max_body_bytes
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, 413, f"body over {limit} bytes", "RESOURCE_EXHAUSTED")
            return
        body: bytes | None = None
        if declared is None and scope["method"] in _BODY_METHODS:
            body = await _read_body(receive, limit)
            if body is None:
                await self._refuse(scope, receive, send, 413, f"body over {limit} bytes", "RESOURCE_EXHAUSTED")
                return
        route = self.route_for(scope)
        if route is not None:
            query = scope.get("query_string", b"")
            problem = parameters_problem(path, QueryParams(query).multi_items() if query else ())
            if problem is None and route.body_field is not None:
                content_type = headers.get("content-type", "").split(";")[0].strip().lower()
                is_json = content_type == "application/json" or (
                    content_type.startswith("application/") and content_type.endswith("+json"))
                if is_json or content_type in _FORM_TYPES:
                    if body is None:
                        body = await _read_body(receive, limit)  # within the declared length: not None
                    problem = json_problem(body or b"") if is_json else await _form_problem(
                        scope, _replay(body or b"", receive))
            if problem is not None:
                await self._refuse(scope, receive, send, 400, problem, "INVALID_ARGUMENT")
                return
        await self.app(scope, receive if body is None else _replay(body, receive), send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str) -> None:
        await error_response(scope["path"], status, message, code=code)(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request's body, or None once it passes `limit` bytes (the rest is left unread)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went: what came is all there is
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` as one message, then whatever the connection says (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _form_problem(scope: Scope, receive: Receive) -> str | None:
    try:
        form = await Request(scope, receive).form()
    except Exception:  # a malformed form: the route answers it
        return None
    try:
        fields = [(name, value if isinstance(value, str) else value.filename or "")
                  for name, value in form.multi_items()]
        return parameters_problem("", fields, "form field")
    finally:
        await form.close()
