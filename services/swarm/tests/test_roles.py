"""The agent-role catalogue."""

from __future__ import annotations

import dataclasses
import re

import pytest

from services.swarm.roles import ROLES, AgentRole, Phase, get_role, roles_for_phase


def test_catalogue_has_the_six_roles() -> None:
    assert [role.name for role in ROLES] == [
        "leader",
        "collector",
        "analyst",
        "skeptic",
        "counterfactual",
        "synthesizer",
    ]
    assert len({role.name for role in ROLES}) == len(ROLES)


def test_roles_are_immutable_and_well_formed() -> None:
    for role in ROLES:
        assert isinstance(role, AgentRole)
        assert role.description and role.phases and role.tools
        assert all(isinstance(phase, Phase) for phase in role.phases)
        assert all(re.fullmatch(r"[a-z]+\.[A-Z][A-Za-z]+", tool) for tool in role.tools)
        with pytest.raises(dataclasses.FrozenInstanceError):
            role.can_vote = not role.can_vote  # type: ignore[misc]
        hash(role)


def test_get_role_and_aliases() -> None:
    assert get_role("skeptic").can_vote
    assert get_role("Planner") is get_role("leader")
    assert get_role("devils-advocate") is get_role("skeptic")
    assert get_role("report writer") is get_role("synthesizer")
    with pytest.raises(KeyError, match=r"unknown agent role 'oracle'; known roles: leader, collector"):
        get_role("oracle")


def test_roles_for_phase() -> None:
    names = {phase: [role.name for role in roles_for_phase(phase)] for phase in Phase}
    assert names[Phase.INGESTION] == ["leader", "collector"]
    assert names[Phase.HYPOTHESES] == ["leader", "analyst", "skeptic"]
    assert names[Phase.CORRELATION] == ["leader", "collector", "analyst", "skeptic"]
    assert names[Phase.COUNTERFACTUALS] == ["leader", "skeptic", "counterfactual"]
    assert names[Phase.SYNTHESIS] == ["leader", "synthesizer"]
    assert roles_for_phase("synthesis") == roles_for_phase(Phase.SYNTHESIS)
    with pytest.raises(ValueError, match="unknown phase"):
        roles_for_phase("voting")


def test_every_phase_is_staffed_and_voting_is_independent_of_planning_and_writing() -> None:
    for phase in Phase:
        assert roles_for_phase(phase)
    voters = {role.name for role in ROLES if role.can_vote}
    assert voters == {"analyst", "skeptic", "counterfactual"}


def test_tool_permissions() -> None:
    collector = get_role("collector")
    assert collector.may_call("collectors.Collect")
    assert not collector.may_call("reasoning.Generate")  # reads untrusted content: no open-ended LLM tools
    assert get_role("synthesizer").may_call("embeddings.Search")
    assert not get_role("synthesizer").may_call("collectors.Collect")
    assert get_role("analyst").acts_in("hypotheses")
    assert not get_role("analyst").acts_in(Phase.SYNTHESIS)
