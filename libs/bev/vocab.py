"""The vocabularies several services speak, defined once: inference tiers and TLP labels.

On the wire they are the enums of bev/common/v1/common.proto (`common_pb2.Tier`, `common_pb2.Tlp`).
Everywhere else (settings, PostgreSQL rows, vector payloads, metrics labels, the CLI, the gateway's
HTTP API) they are lower-case labels: "fast", "amber+strict". `Tier` and `Tlp` are the one mapping
between the two: StrEnums whose members *are* those labels (``Tlp.AMBER == "amber"``,
``f"{Tier.FAST}" == "fast"``), in order (lowest tier first; least restrictive TLP first), with
`parse` for what people type and `to_proto` / `from_proto` for the wire.

`from_proto` maps the enums' UNSPECIFIED value to its `default` argument, None unless one is given:
what "not given" means (the service's default tier, its default TLP) is the caller's to decide.
A value outside the enum (proto3 enums are open, a newer peer may send one) raises the
vocabulary's `UnknownLabel` subclass, as `parse` does for an unknown label. Both are ValueErrors
whose message lists the valid labels.

The constructor accepts what `parse` accepts (``Tlp("TLP:AMBER") is Tlp.AMBER``), so pydantic
fields typed `Tier` or `Tlp` take the same spellings as the CLI and the HTTP API.

`message_to_dict` is protobuf's MessageToDict with these enums written as labels, for JSON that
people read (the gateway's responses, `bev search --json`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, overload

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from bev.common.v1 import common_pb2

__all__ = ["Tier", "Tlp", "UnknownLabel", "UnknownTier", "UnknownTlp", "message_to_dict"]


class UnknownLabel(ValueError):
    """A label, or a wire value, outside its vocabulary; the message lists the valid labels."""


class UnknownTier(UnknownLabel):
    pass


class UnknownTlp(UnknownLabel):
    pass


class Tier(StrEnum):
    """An inference tier, lowest first. A request that its tier cannot serve falls back to lower
    tiers, never to higher ones (see services/reasoning/router.py)."""

    FAST = "fast"
    BALANCED = "balanced"
    POWERFUL = "powerful"

    @classmethod
    def ordered(cls) -> tuple[Tier, ...]:
        """Every tier, lowest first."""
        return _TIERS

    @property
    def rank(self) -> int:
        """0 for the lowest tier, 1 for the next, ...: compare tiers by rank, never by label."""
        return _TIERS.index(self)

    def and_lower(self) -> tuple[Tier, ...]:
        """This tier, then each lower one: the order a request falls back in."""
        return _TIERS[self.rank :: -1]

    @classmethod
    def parse(cls, text: str) -> Tier:
        """The tier `text` names, case and surrounding space ignored; UnknownTier otherwise, an
        empty text too (what "no tier" means is the caller's default)."""
        label = text.strip().lower()
        for tier in _TIERS:
            if tier.value == label:
                return tier
        raise UnknownTier(f"unknown tier {text!r}; use one of {', '.join(_TIERS)}")

    @classmethod
    def _missing_(cls, value: object) -> Tier | None:
        return cls.parse(value) if isinstance(value, str) else None

    def to_proto(self) -> common_pb2.Tier.ValueType:
        return _TIER_TO_PROTO[self]

    @overload
    @classmethod
    def from_proto(cls, value: int) -> Tier | None: ...

    @overload
    @classmethod
    def from_proto(cls, value: int, default: Tier) -> Tier: ...

    @classmethod
    def from_proto(cls, value: int, default: Tier | None = None) -> Tier | None:
        """The tier a `common_pb2.Tier` value names; TIER_UNSPECIFIED -> `default` (None unless
        given); UnknownTier for a value outside the enum."""
        if value == common_pb2.TIER_UNSPECIFIED:
            return default
        try:
            return _TIER_FROM_PROTO[value]
        except KeyError:
            raise UnknownTier(f"unknown tier value {value}; use one of {', '.join(_TIERS)}") from None


class Tlp(StrEnum):
    """A Traffic Light Protocol 2.0 label, least restrictive first."""

    CLEAR = "clear"
    GREEN = "green"
    AMBER = "amber"
    AMBER_STRICT = "amber+strict"
    RED = "red"

    @classmethod
    def ordered(cls) -> tuple[Tlp, ...]:
        """Every label, least restrictive first."""
        return _TLPS

    @property
    def rank(self) -> int:
        """0 for clear up to 4 for red: compare labels by rank, never by label text."""
        return _TLPS.index(self)

    @classmethod
    def parse(cls, text: str) -> Tlp:
        """The label `text` names: case and surrounding space ignored, an optional "TLP:" prefix
        ("TLP:AMBER+STRICT"), TLP 1.0's "white" for clear, and an empty text for clear (not given).
        UnknownTlp otherwise."""
        label = text.strip().lower()
        if not label:
            return Tlp.CLEAR
        label = label.removeprefix("tlp:").strip()
        label = _TLP_ALIASES.get(label, label)
        for tlp in _TLPS:
            if tlp.value == label:
                return tlp
        raise UnknownTlp(f"unknown TLP label {text!r}; use one of {', '.join(_TLPS)}")

    @classmethod
    def _missing_(cls, value: object) -> Tlp | None:
        return cls.parse(value) if isinstance(value, str) else None

    def to_proto(self) -> common_pb2.Tlp.ValueType:
        return _TLP_TO_PROTO[self]

    @overload
    @classmethod
    def from_proto(cls, value: int) -> Tlp | None: ...

    @overload
    @classmethod
    def from_proto(cls, value: int, default: Tlp) -> Tlp: ...

    @classmethod
    def from_proto(cls, value: int, default: Tlp | None = None) -> Tlp | None:
        """The label a `common_pb2.Tlp` value names; TLP_UNSPECIFIED -> `default` (None unless
        given); UnknownTlp for a value outside the enum."""
        if value == common_pb2.TLP_UNSPECIFIED:
            return default
        try:
            return _TLP_FROM_PROTO[value]
        except KeyError:
            raise UnknownTlp(f"unknown TLP value {value}; use one of {', '.join(_TLPS)}") from None


_TIERS: tuple[Tier, ...] = tuple(Tier)
_TLPS: tuple[Tlp, ...] = tuple(Tlp)
_TLP_ALIASES = {"white": Tlp.CLEAR.value}  # TLP 1.0

# Member FAST <-> TIER_FAST, AMBER_STRICT <-> TLP_AMBER_STRICT: a member without its proto value
# fails here, at import; tests/test_vocab.py checks the other direction.
_TIER_TO_PROTO: dict[Tier, common_pb2.Tier.ValueType] = {t: common_pb2.Tier.Value(f"TIER_{t.name}") for t in _TIERS}
_TIER_FROM_PROTO: dict[int, Tier] = {int(value): tier for tier, value in _TIER_TO_PROTO.items()}
_TLP_TO_PROTO: dict[Tlp, common_pb2.Tlp.ValueType] = {t: common_pb2.Tlp.Value(f"TLP_{t.name}") for t in _TLPS}
_TLP_FROM_PROTO: dict[int, Tlp] = {int(value): tlp for tlp, value in _TLP_TO_PROTO.items()}

# Proto value name -> label, per vocabulary enum; UNSPECIFIED -> "" (what an unset string field read
# before the vocabularies were enums).
_LABELS: dict[str, dict[str, str]] = {
    common_pb2.Tier.DESCRIPTOR.full_name: {
        common_pb2.Tier.Name(common_pb2.TIER_UNSPECIFIED): "",
        **{common_pb2.Tier.Name(value): tier.value for tier, value in _TIER_TO_PROTO.items()},
    },
    common_pb2.Tlp.DESCRIPTOR.full_name: {
        common_pb2.Tlp.Name(common_pb2.TLP_UNSPECIFIED): "",
        **{common_pb2.Tlp.Name(value): tlp.value for tlp, value in _TLP_TO_PROTO.items()},
    },
}


def message_to_dict(message: Message, *, always_print_fields_with_no_presence: bool = False) -> dict[str, Any]:
    """MessageToDict(message, preserving_proto_field_name=True) with every `bev.common.v1.Tier` and
    `Tlp` field, nested messages included, written as its label: "green", not "TLP_GREEN"
    (UNSPECIFIED: ""; a value outside the enum stays the number MessageToDict writes)."""
    data = MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=always_print_fields_with_no_presence)
    _relabel(message, data)
    return data


def _relabel(message: Message, data: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.enum_type is not None:
            labels = _LABELS.get(field.enum_type.full_name)
            if labels is None:
                continue
            if field.is_repeated:
                data[field.name] = [labels.get(v, v) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str):
                data[field.name] = labels.get(value, value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            # (map values are left as they are: no map holds a vocabulary)
            nested = getattr(message, field.name)
            if field.is_repeated:
                for item, item_data in zip(nested, value, strict=False):
                    if isinstance(item_data, dict):
                        _relabel(item, item_data)
            elif isinstance(value, dict):  # well-known types (Timestamp, Struct) are not dicts of fields
                _relabel(nested, value)
