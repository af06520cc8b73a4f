"""What every route module shares: proto -> JSON, RPC status -> HTTP status, and a 400 for a bad
enum name or vocabulary label.

The HTTP API speaks the vocabularies of bev.vocab as lower-case labels, in both directions:
requests take "green", "TLP:AMBER", "balanced" (see `tlp_value`, `tier_value`), and `to_json`
writes `bev.common.v1.Tlp` / `Tier` fields as "green", "balanced", not as their proto names
(bev.vocab.message_to_dict).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from fastapi import HTTPException
from google.protobuf.message import Message

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
