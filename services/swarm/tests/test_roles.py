"""The agent-role catalogue."""

from __future__ import annotations

import dataclasses
import re

import pytest

from services.swarm.roles import (
    MODEL_TOOLS,
    NETWORK_TOOLS,
    ROLES,
    SPECIALISTS,
    AgentRole,
    Phase,
    get_role,
    roles_for_phase,
)


def test_catalogue_has_leader_workers_specialists_and_monitor() -> None:
    assert [role.name for role in ROLES] == [
        "leader", "worker", "infrastructure", "crypto", "threat-actor", "darknet",
        "analyst", "skeptic", "counterfactual", "synthesizer", "monitor",
    ]
    assert set(SPECIALISTS) <= {role.name for role in ROLES}


def test_roles_are_immutable_and_well_formed() -> None:
    for role in ROLES:
        assert isinstance(role, AgentRole)
        assert role.description and role.phases
        assert all(isinstance(phase, Phase) for phase in role.phases)
        assert all(re.fullmatch(r"[a-z]+\.[A-Z][A-Za-z]+", tool) for tool in role.tools)
        assert bool(role.prompt) == bool(set(role.tools) & MODEL_TOOLS)  # a role with a model has its own prompt
        with pytest.raises(dataclasses.FrozenInstanceError):
            role.can_vote = not role.can_vote  # type: ignore[misc]
        hash(role)


def test_a_role_that_reads_with_a_model_has_no_network_tool() -> None:
    """Collected content is data: the agent whose model reads it cannot fetch anything."""
    for role in ROLES:
        assert not (set(role.tools) & MODEL_TOOLS and set(role.tools) & NETWORK_TOOLS), role.name
    assert get_role("worker").may_call("collectors.Collect")
    assert not get_role("worker").may_call("reasoning.Analyze")
    assert get_role("monitor").tools == ("embeddings.GetDocument",)  # reads stored pages, by pattern


def test_get_role_and_aliases() -> None:
    assert get_role("skeptic").can_vote
    assert get_role("Planner") is get_role("leader")
    assert get_role("collector") is get_role("worker")
    assert get_role("threat actor") is get_role("threat-actor")
    assert get_role("devils-advocate") is get_role("skeptic")
    assert get_role("report writer") is get_role("synthesizer")
    with pytest.raises(KeyError, match=r"unknown agent role 'oracle'; known roles: leader, worker"):
        get_role("oracle")


def test_roles_for_phase() -> None:
    names = {phase: [role.name for role in roles_for_phase(phase)] for phase in Phase}
    assert names[Phase.INGESTION] == ["leader", "worker", "monitor"]
    assert names[Phase.HYPOTHESES] == ["leader", *SPECIALISTS, "analyst", "skeptic", "monitor"]
    assert names[Phase.SYNTHESIS] == ["leader", "synthesizer", "monitor"]
    assert roles_for_phase("synthesis") == roles_for_phase(Phase.SYNTHESIS)
    with pytest.raises(ValueError, match="unknown phase"):
        roles_for_phase("voting")


def test_voting_is_independent_of_planning_gathering_and_writing() -> None:
    for phase in Phase:
        assert roles_for_phase(phase)
    voters = {role.name for role in ROLES if role.can_vote}
    assert voters == {*SPECIALISTS, "analyst", "skeptic", "counterfactual"}
    assert not ({"leader", "worker", "synthesizer", "monitor"} & voters)
