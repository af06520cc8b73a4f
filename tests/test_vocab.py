"""bev.vocab: the tier and TLP vocabularies, their labels, order, parsing and proto round trips."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.reasoning.v1 import reasoning_pb2
from bev.vocab import Tier, Tlp, UnknownLabel, UnknownTier, UnknownTlp, message_to_dict

TLP_LABELS = ["clear", "green", "amber", "amber+strict", "red"]


def test_members_are_their_labels_in_order() -> None:
    assert [t.value for t in Tier.ordered()] == ["fast", "balanced", "powerful"]
    assert [t.value for t in Tlp.ordered()] == TLP_LABELS
    assert Tier.ordered() == tuple(Tier) and Tlp.ordered() == tuple(Tlp)
    assert [t.rank for t in Tier.ordered()] == [0, 1, 2]
    assert [t.rank for t in Tlp.ordered()] == [0, 1, 2, 3, 4]
    amber: str = "amber"
    assert Tlp.AMBER == amber and f"{Tlp.AMBER_STRICT}" == "amber+strict" and str(Tier.FAST) == "fast"
    assert json.dumps({"tlp": Tlp.RED, "tier": Tier.BALANCED}) == '{"tlp": "red", "tier": "balanced"}'
    assert Tlp.RED.rank > Tlp.AMBER_STRICT.rank > Tlp.AMBER.rank  # by rank: "red" < "amber" as text


def test_tier_fallback_order() -> None:
    assert Tier.POWERFUL.and_lower() == (Tier.POWERFUL, Tier.BALANCED, Tier.FAST)
    assert Tier.BALANCED.and_lower() == (Tier.BALANCED, Tier.FAST)
    assert Tier.FAST.and_lower() == (Tier.FAST,)


@pytest.mark.parametrize(("text", "expected"), [
    ("amber", Tlp.AMBER), ("TLP:AMBER", Tlp.AMBER), ("tlp:amber+strict", Tlp.AMBER_STRICT),
    ("TLP:AMBER+STRICT", Tlp.AMBER_STRICT), (" Green ", Tlp.GREEN), ("RED", Tlp.RED), ("TLP: red", Tlp.RED),
    ("white", Tlp.CLEAR), ("TLP:WHITE", Tlp.CLEAR), ("", Tlp.CLEAR), ("  ", Tlp.CLEAR), ("clear", Tlp.CLEAR),
])
def test_tlp_parse_accepts_labels_prefixes_and_aliases(text: str, expected: Tlp) -> None:
    assert Tlp.parse(text) is expected
    assert Tlp(text) is expected  # the constructor (and so pydantic) reads the same spellings


@pytest.mark.parametrize("text", ["purple", "amber strict", "TLP:", "tlp:purple", "amber_strict", "TLP_AMBER"])
def test_tlp_parse_rejects_the_rest_listing_the_labels(text: str) -> None:
    with pytest.raises(UnknownTlp) as error:
        Tlp.parse(text)
    assert isinstance(error.value, ValueError) and isinstance(error.value, UnknownLabel)
    assert repr(text) in str(error.value) and "clear, green, amber, amber+strict, red" in str(error.value)
    with pytest.raises(ValueError):
        Tlp(text)


def test_tier_parse() -> None:
    assert Tier.parse("fast") is Tier.FAST and Tier.parse(" Balanced ") is Tier.BALANCED
    assert Tier("POWERFUL") is Tier.POWERFUL
    for text in ("", "turbo", "TIER_FAST"):
        with pytest.raises(UnknownTier, match="use one of fast, balanced, powerful"):
            Tier.parse(text)


def test_proto_round_trips() -> None:
    assert [t.to_proto() for t in Tier.ordered()] == [common_pb2.TIER_FAST, common_pb2.TIER_BALANCED,
                                                      common_pb2.TIER_POWERFUL]
    assert [t.to_proto() for t in Tlp.ordered()] == [common_pb2.TLP_CLEAR, common_pb2.TLP_GREEN, common_pb2.TLP_AMBER,
                                                     common_pb2.TLP_AMBER_STRICT, common_pb2.TLP_RED]
    for tier in Tier:
        assert Tier.from_proto(tier.to_proto()) is tier
    for tlp in Tlp:
        assert Tlp.from_proto(tlp.to_proto()) is tlp
    # Every proto value but UNSPECIFIED has its member: adding one to the enum without a member fails here.
    assert {Tier.from_proto(v) for v in common_pb2.Tier.values() if v} == set(Tier)
    assert {Tlp.from_proto(v) for v in common_pb2.Tlp.values() if v} == set(Tlp)
    # Reasoning's wire format did not change when Tier moved to bev.common.v1.
    assert (common_pb2.TIER_UNSPECIFIED, common_pb2.TIER_FAST, common_pb2.TIER_POWERFUL) == (0, 1, 3)


def test_unspecified_is_the_callers_default() -> None:
    assert Tier.from_proto(common_pb2.TIER_UNSPECIFIED) is None
    assert Tier.from_proto(common_pb2.TIER_UNSPECIFIED, Tier.BALANCED) is Tier.BALANCED
    assert Tier.from_proto(common_pb2.TIER_POWERFUL, Tier.BALANCED) is Tier.POWERFUL
    assert Tlp.from_proto(common_pb2.TLP_UNSPECIFIED) is None
    assert Tlp.from_proto(common_pb2.TLP_UNSPECIFIED, Tlp.CLEAR) is Tlp.CLEAR
    assert Tlp.from_proto(reasoning_pb2.ChatRequest().tier) is None  # an unset field


def test_unknown_wire_values_are_errors() -> None:
    with pytest.raises(UnknownTier, match="unknown tier value 7"):
        Tier.from_proto(7)
    with pytest.raises(UnknownTlp, match="unknown TLP value 42; use one of clear"):
        Tlp.from_proto(42, Tlp.CLEAR)


def test_pydantic_fields_take_labels() -> None:
    class Config(BaseModel):
        tier: Tier = Tier.FAST
        tlp: Tlp = Tlp.CLEAR
        endpoints: dict[Tier, str] = {}

    config = Config.model_validate_json('{"tier": "Balanced", "tlp": "TLP:AMBER", "endpoints": {"powerful": "u"}}')
    assert (config.tier, config.tlp, config.endpoints) == (Tier.BALANCED, Tlp.AMBER, {Tier.POWERFUL: "u"})
    assert json.loads(config.model_dump_json()) == {"tier": "balanced", "tlp": "amber", "endpoints": {"powerful": "u"}}
    with pytest.raises(ValueError, match="clear"):
        Config(tlp="purple")  # type: ignore[arg-type]


def test_message_to_dict_writes_labels() -> None:
    response = embeddings_pb2.SearchResponse(hits=[
        embeddings_pb2.SearchHit(document_id="a", tlp=common_pb2.TLP_AMBER_STRICT),
        embeddings_pb2.SearchHit(document_id="b"),
    ])
    data = message_to_dict(response, always_print_fields_with_no_presence=True)
    assert [(h["document_id"], h["tlp"]) for h in data["hits"]] == [("a", "amber+strict"), ("b", "")]
    filters = embeddings_pb2.SearchFilters(tlp=[common_pb2.TLP_GREEN, common_pb2.Tlp.ValueType(42)])
    assert message_to_dict(filters)["tlp"] == ["green", 42]  # outside the enum: the number stays
    status = reasoning_pb2.RouterStatusResponse(
        default_tier=common_pb2.TIER_BALANCED, backends=[reasoning_pb2.BackendStatus(name="x", tier=common_pb2.TIER_FAST)])
    assert message_to_dict(status) == {"default_tier": "balanced", "backends": [{"name": "x", "tier": "fast"}]}
    # Other enums keep their proto names.
    request = embeddings_pb2.SearchRequest(mode=embeddings_pb2.SEARCH_MODE_TEXT)
    assert message_to_dict(request) == {"mode": "SEARCH_MODE_TEXT"}
