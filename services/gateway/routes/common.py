"""What every route module shares: proto -> JSON, RPC status -> HTTP status, a 400 for a bad
enum name or vocabulary label, the strict base of every request body, and the error bodies.

The HTTP API speaks the vocabularies of bev.vocab as lower-case labels, in both directions:
requests take "green", "TLP:AMBER", "balanced" (see `tlp_value`, `tier_value`), and `to_json`
writes `bev.common.v1.Tlp` / `Tier` fields as "green", "balanced", not as their proto names
(bev.vocab.message_to_dict).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import HTTPException, Query
from fastapi.responses import JSONResponse
from google.protobuf.message import Message
from pydantic import BaseModel, BeforeValidator, ConfigDict

from bev.common.v1 import common_pb2
from bev.rpc import StatusCode
from bev.vocab import Tier, Tlp, UnknownLabel, message_to_dict

# How an RPC's status reaches an HTTP client; any other code is a 502 (the service failed).
HTTP_STATUS = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.FAILED_PRECONDITION: 409,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}

# The largest value of a proto int32 field (limits, depths, counts): a bigger one cannot be sent.
INT32_MAX = 2**31 - 1
# Most tokens one generation may ask for: the reasoning service's own ceiling
# (ReasoningConfig.max_tokens_limit), so that a request the gateway takes is one the service takes.
MAX_TOKENS = 4096


class Body(BaseModel):
    """The base of every JSON request body: JSON types as declared, no coercion (`0` is not a
    boolean, `false` not a number, `"5"` not an integer), and finite numbers only. Integer fields
    are `Int`."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


def _integral(value: Any) -> Any:
    # JSON has one number type: 64.0 is the integer 64 (JSON Schema says so too); 64.5 stays a float
    # and is refused. A boolean is not a float here, so `true` is refused as well.
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)
# An integer field of a strict Body. An optional one is `Annotated[int, Field(ge=.., le=..), INTEGRAL] | None`
# (bounds inside, so that the OpenAPI schema states them as minimum and maximum).
Int = Annotated[int, INTEGRAL]


def labels(*values: str) -> dict[str, Any]:
    """`json_schema_extra` listing a string field's values in the OpenAPI schema. The route still
    parses the field itself (case-insensitive vocabulary labels, 400 naming the valid ones)."""
    return {"enum": list(values)}


TIER_LABELS = labels("", "fast", "balanced", "powerful")
TLP_LABELS = labels("", "clear", "green", "amber", "amber+strict", "red")

# Error bodies. The analysts' API: {"error": message, "code": RPC status name}, 422s with the
# validation errors too. The OpenAI-compatible routes (/v1/...): OpenAI's own shape, which its
# clients read the message from.
OPENAI_PREFIX = "/v1/"
_CODE_FOR_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "FAILED_PRECONDITION",
                    413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
                    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "INTERNAL",
                    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong"},
        "code": {"type": "string", "description": "the RPC status name: INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE..."},
        "detail": {"type": "array", "description": "422: each invalid value",
                   "items": {"type": "object", "properties": {
                       "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                       "msg": {"type": "string"}, "type": {"type": "string"}}}},
    },
}
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}

# Documented on every route (the API adds them; a route declares only its own, such as 404):
# what any request can meet, whatever the route.
COMMON_ERRORS: dict[int, str] = {
    400: "A value the API or the service refuses; the message says which and why",
    401: "No API key, or one that is unknown, revoked or expired (Authorization: Bearer <key>)",
    403: "The API key lacks the scope this route needs (x-bev-scope)",
    408: "The request was not received in time (slow client)",
    405: "The path exists, for other methods",
    413: "The body is over the size limit",
    422: "The request does not match its schema (OpenAI routes: 400 instead)",
    429: "The key is over its hourly requests or daily LLM tokens (Retry-After says when to retry), "
         "its team runs as many investigations as it may, or the service is at capacity",
    502: "The service failed while answering",
    503: "No instance of the service is serving, or the gateway is at its connection limit",
    504: "The service did not answer within the deadline",
}


def error_code(status: int) -> str:
    """The RPC status name an HTTP error status stands for, in the analysts' error body."""
    return _CODE_FOR_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def openai_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error")


class ErrorResponse(JSONResponse):
    """A JSON error body; non-ASCII is escaped, so that no text a client sent can fail to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(path: str, status: int, message: str, *, code: str | None = None, param: str | None = None,
                   detail: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> ErrorResponse:
    """The error body for a request to `path`: OpenAI's shape under /v1/, the analysts' otherwise.
    `code` is the RPC status name (default: the one `status` stands for)."""
    if path.startswith(OPENAI_PREFIX):
        body: dict[str, Any] = {"error": {"message": message, "type": openai_type(status), "param": param,
                                          "code": code.lower() if code else None}}
    else:
        body = {"error": message, "code": code or error_code(status)}
        if detail is not None:
            body["detail"] = detail
    return ErrorResponse(body, status_code=status, headers=headers)


def to_json(message: Message) -> dict[str, Any]:
    """A response's JSON: proto field names, unset fields too, Tier/Tlp fields as labels."""
    return message_to_dict(message, always_print_fields_with_no_presence=True)


def tlp_value(label: str) -> common_pb2.Tlp.ValueType:
    """A TLP label from a request ("green", "TLP:AMBER", "white") -> the wire enum; an empty label is
    TLP_UNSPECIFIED (the service's default). Anything else is the caller's error (400, listing the
    valid labels)."""
    if not label.strip():
        return common_pb2.TLP_UNSPECIFIED
    try:
        return Tlp.parse(label).to_proto()
    except UnknownLabel as exc:
        raise HTTPException(400, str(exc)) from None


def tier_value(name: str) -> common_pb2.Tier.ValueType:
    """A tier name from a request ("fast", "Balanced") -> the wire enum; an empty name is
    TIER_UNSPECIFIED (the service's default tier). Anything else is the caller's error (400)."""
    if not name.strip():
        return common_pb2.TIER_UNSPECIFIED
    try:
        return Tier.parse(name).to_proto()
    except UnknownLabel as exc:
        raise HTTPException(400, str(exc)) from None


V = TypeVar("V", covariant=True)


class ProtoEnum(Protocol[V]):
    """A generated protobuf enum (its EnumTypeWrapper), typed by mypy-protobuf's ValueType."""

    def Value(self, name: str) -> V: ...


def enum_value(enum: ProtoEnum[V], prefix: str, name: str, what: str) -> V:
    """`Phase`, "PHASE_", "synthesis" -> PHASE_SYNTHESIS; unknown names are the caller's error (400)."""
    try:
        return enum.Value(f"{prefix}{name.upper()}")
    except ValueError:
        raise HTTPException(400, f"unknown {what} {name!r}") from None


# -- pagination: one shape for every list route. `limit` and `cursor` in, `next_cursor` out ("" on
# the last page). A route whose service pages passes the service's cursor through; for the others
# the gateway pages over the service's whole (short) list in a stable order, the cursor being the
# last item's sort key, base64url-encoded (opaque to clients: they send back what they got).
MAX_PAGE = 500
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="most items on this page")]
Cursor = Annotated[str, Query(max_length=1024, description="`next_cursor` of the previous page; empty: the first")]
T = TypeVar("T")


# A list the gateway pages itself (`paged`) resumes after an item's sort key, which any text is, so
# every cursor of this shape is a valid position (hex, because a key may hold characters no query
# parameter may: the fleet list's key holds NUL).
PageCursor = Annotated[str, Query(max_length=1024, pattern=r"^([0-9a-f]{2})*$",
                                  description="`next_cursor` of the previous page; empty: the first")]


def encode_cursor(key: str) -> str:
    return key.encode().hex()


def decode_cursor(cursor: str) -> str:
    """The sort key a cursor of `encode_cursor` holds (PageCursor's pattern makes it hex)."""
    return bytes.fromhex(cursor).decode("utf-8", "replace")


def paged(items: Iterable[T], key: Callable[[T], str], limit: int, cursor: str) -> tuple[list[T], str]:
    """The page of `items`, in `key` order, after the item `cursor` names; and the next page's
    cursor ("" when this is the last). `key` must be unique per item."""
    after = decode_cursor(cursor)
    rest = sorted((item for item in items if not cursor or key(item) > after), key=key)
    page = rest[:limit]
    return page, encode_cursor(key(page[-1])) if len(rest) > limit else ""
