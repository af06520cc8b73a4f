"""What every route module shares: proto -> JSON, and a 400 for a bad enum name."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from fastapi import HTTPException
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def to_json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


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
