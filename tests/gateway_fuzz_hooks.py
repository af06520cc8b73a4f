"""Schemathesis hooks for tests/test_gateway_fuzz.py (loaded by the `schemathesis` CLI through
SCHEMATHESIS_HOOKS): keep each generated request that runs a model cheap on two CPU cores, and keep
the run's own API key from being revoked by the run.

The API takes up to 4,096 tokens per generation and 2,048 texts per embedding call, and Schemathesis
aims at those bounds; the test model reads a prompt at a few dozen tokens a second on a busy CPU, so
a few such requests would take the whole run. So, right before a request is sent, a valid
`max_tokens` above 16 becomes 16, a list of more than 32 texts keeps its first 32, and the text the
model reads (prompt, question, documents, message contents) keeps its first 40 characters. A value
that is invalid (0, 4097, "16", a list of numbers, an empty prompt) is left as generated, so each
request stays as valid or as invalid as Schemathesis made it (Schemathesis re-checks a case that a
hook changed). The bounds themselves are the API models' (services/gateway/routes), and
services/gateway/tests check them.

The fuzzer holds an admin key, and POST /api/v1/keys/{key_id}/revoke revokes a key. Its stateful phase
reuses ids from earlier answers in later requests (GET /api/v1/keys lists every key's), so it could
revoke its own key (every later request would be a 401, and the run would test nothing) or the
fleet's admin key. So a DELETE aimed
at a key named in $BEV_FUZZ_KEEP_KEYS (comma-separated ids) goes to an id no key has instead: a 404,
which the schema documents for that operation as for any unknown id.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

MAX_TOKENS = 16
MAX_TEXTS = 32
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
_TEXT_FIELDS = ("texts", "input")


MAX_CHARS = 40

KEPT_KEYS = frozenset(filter(None, os.environ.get("BEV_FUZZ_KEEP_KEYS", "").split(",")))
REVOKE = ("POST", "/api/v1/keys/{key_id}/revoke")
NO_SUCH_KEY = "no-such-key-kept-by-the-fuzzer"


def _clip(holder: dict[str, Any], field: str) -> None:
    value = holder.get(field)
    if isinstance(value, str) and len(value) > MAX_CHARS:
        holder[field] = value[:MAX_CHARS]


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _keep_own_keys(case: Any) -> None:
    key_id = case.path_parameters.get("key_id") if case.path_parameters else None
    if (case.method.upper(), case.path) == REVOKE and isinstance(key_id, str) and key_id in KEPT_KEYS:
        case.path_parameters["key_id"] = NO_SUCH_KEY


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    _keep_own_keys(case)
    body = case.body
    if not isinstance(body, dict):
        return
    _clip(body, "prompt")
    _clip(body, "question")
    for document in _objects(body.get("documents")):
        _clip(document, "text")
    for message in _objects(body.get("messages")):
        _clip(message, "content")
        for part in _objects(message.get("content")):
            _clip(part, "text")
    for field in _TOKEN_FIELDS:
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer() \
                and MAX_TOKENS < value <= 4096:
            body[field] = MAX_TOKENS
    for field in _TEXT_FIELDS:
        value = body.get(field)
        if isinstance(value, list) and len(value) > MAX_TEXTS and all(isinstance(v, str) for v in value):
            body[field] = value[:MAX_TEXTS]
