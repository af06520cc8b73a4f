"""The agent roles an investigation staffs, the phases they act in and the RPCs they may call.

An explicit catalogue, not free-form prompts: the swarm validates each tool call an agent makes
against its role's ``tools`` (the model reading untrusted content gets no open-ended tools), and
the vote that closes the hypotheses phase counts only roles with ``can_vote``. The leader and the
synthesizer do not vote so that the agent who plans and the agent who writes the report cannot
tip the result they then present; the collector does not vote because it gathers, not judges.

Tool names are "<service>.<Method>" of the fleet's RPCs (see ``protos/bev/<service>/v1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """The five analysis phases, in order (mirrors ``bev.swarm.v1.Phase``)."""

    INGESTION = "ingestion"
    HYPOTHESES = "hypotheses"
    CORRELATION = "correlation"
    COUNTERFACTUALS = "counterfactuals"
    SYNTHESIS = "synthesis"


# Tool (RPC) names roles may be granted.
COLLECT = "collectors.Collect"
EXTRACT = "collectors.Extract"
GRAPH_QUERY = "collectors.GraphQuery"
SEARCH = "embeddings.Search"
EMBED = "embeddings.Embed"
GENERATE = "reasoning.Generate"


@dataclass(frozen=True)
class AgentRole:
    name: str
    description: str
    phases: tuple[Phase, ...]
    tools: tuple[str, ...]
    can_vote: bool

    def acts_in(self, phase: Phase | str) -> bool:
        return Phase(phase) in self.phases

    def may_call(self, tool: str) -> bool:
        return tool in self.tools


ROLES: tuple[AgentRole, ...] = (
    AgentRole(
        name="leader",
        description=(
            "Plans the investigation from the playbook for the target type (or with tool calls on a "
            "strong model), assigns work, enforces the budget and closes each phase."
        ),
        phases=tuple(Phase),
        tools=(GENERATE, SEARCH, GRAPH_QUERY),
        can_vote=False,
    ),
    AgentRole(
        name="collector",
        description=(
            "Gathers evidence about the target and pivots (domain -> IPs -> URLs, wallet -> "
            "transactions), extracts indicators and records provenance; fetches more on request."
        ),
        phases=(Phase.INGESTION, Phase.CORRELATION),
        tools=(COLLECT, EXTRACT, EMBED),
        can_vote=False,
    ),
    AgentRole(
        name="analyst",
        description=(
            "Proposes hypotheses grounded in retrieved evidence and tests them against the graph "
            "and the corpus, citing the evidence for every claim."
        ),
        phases=(Phase.HYPOTHESES, Phase.CORRELATION),
        tools=(GENERATE, SEARCH, GRAPH_QUERY),
        can_vote=True,
    ),
    AgentRole(
        name="skeptic",
        description=(
            "Devil's advocate: attacks each hypothesis, looks for contradicting evidence, weak "
            "sources and alternative explanations, and records dissent."
        ),
        phases=(Phase.HYPOTHESES, Phase.CORRELATION, Phase.COUNTERFACTUALS),
        tools=(GENERATE, SEARCH, GRAPH_QUERY),
        can_vote=True,
    ),
    AgentRole(
        name="counterfactual",
        description=(
            "For each hypothesis, states what would have to be true for it to be wrong and checks "
            "whether the evidence rules that out."
        ),
        phases=(Phase.COUNTERFACTUALS,),
        tools=(GENERATE, SEARCH, GRAPH_QUERY),
        can_vote=True,
    ),
    AgentRole(
        name="synthesizer",
        description=(
            "Writes the report: confidence per hypothesis, votes and dissent, and citations that "
            "resolve to stored evidence."
        ),
        phases=(Phase.SYNTHESIS,),
        tools=(GENERATE, SEARCH),
        can_vote=False,
    ),
)

# Other names people use for the same roles.
ALIASES: dict[str, str] = {
    "planner": "leader",
    "devils_advocate": "skeptic",
    "counterfactual_analyst": "counterfactual",
    "report_writer": "synthesizer",
}

_BY_NAME: dict[str, AgentRole] = {role.name: role for role in ROLES}


def get_role(name: str) -> AgentRole:
    """The role called ``name`` (case-insensitive; aliases such as "planner" accepted)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        known = ", ".join(role.name for role in ROLES)
        raise KeyError(f"unknown agent role {name!r}; known roles: {known}") from None


def roles_for_phase(phase: Phase | str) -> tuple[AgentRole, ...]:
    """Roles acting in ``phase`` (a Phase or its value, e.g. "synthesis"), in catalogue order."""
    try:
        wanted = Phase(phase)
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise ValueError(f"unknown phase {phase!r}; phases: {known}") from None
    return tuple(role for role in ROLES if wanted in role.phases)
