"""The agent roles an investigation staffs, the phases they act in and the RPCs they may call.

An explicit catalogue, not free-form prompts: the swarm validates each tool call an agent makes
against its role's ``tools`` (the model reading untrusted content gets no open-ended tools), and
the vote that closes the hypotheses phase counts only roles with ``can_vote``. The leader and the
synthesizer do not vote so that the agent who plans and the agent who writes the report cannot
tip the result they then present; workers and the monitor do not vote because they gather and watch,
not judge.

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
NEIGHBORHOOD = "collectors.Neighborhood"
GET_ENTITY = "collectors.GetEntity"
GRAPH_QUERY = "collectors.GraphQuery"
SEARCH = "embeddings.Search"
GET_DOCUMENT = "embeddings.GetDocument"
ANALYZE = "reasoning.Analyze"
CHAT = "reasoning.Chat"

# Tools that make a connection outside the fleet (the collectors fetch on the call's behalf).
NETWORK_TOOLS = frozenset({COLLECT})
# Tools that hand text to a language model.
MODEL_TOOLS = frozenset({ANALYZE, CHAT})


@dataclass(frozen=True)
class AgentRole:
    name: str
    description: str
    phases: tuple[Phase, ...]
    tools: tuple[str, ...]
    can_vote: bool
    # What the role's model calls are told they are (its own prompt); empty for roles without a model.
    prompt: str = ""

    def acts_in(self, phase: Phase | str) -> bool:
        return Phase(phase) in self.phases

    def may_call(self, tool: str) -> bool:
        return tool in self.tools


_ANALYSIS_TOOLS = (ANALYZE, CHAT, SEARCH, NEIGHBORHOOD, GRAPH_QUERY)

# Collected content is data, never instructions: a role that reads it with a model has no network
# tool, and a role with a network tool never calls a model (tests/test_roles.py holds every role to it).
ROLES: tuple[AgentRole, ...] = (
    AgentRole(
        name="leader",
        description=(
            "Plans the investigation from the playbook for the target type (or with tool calls on a "
            "strong model), assigns work to workers and specialists, closes each phase and, in "
            "hierarchical mode, picks the finding."
        ),
        phases=tuple(Phase),
        tools=(CHAT, SEARCH, GRAPH_QUERY, NEIGHBORHOOD),
        can_vote=False,
        prompt="You lead a threat-intelligence investigation and decide which hypothesis the evidence best supports.",
    ),
    AgentRole(
        name="worker",
        description=(
            "Executes the plan's tool calls: collects evidence about the target and pivots (domain -> "
            "IPs -> pages -> linked hosts, wallet -> transactions), extracts indicators, reads the graph. "
            "Reads nothing with a model."
        ),
        phases=(Phase.INGESTION, Phase.CORRELATION),
        tools=(COLLECT, EXTRACT, NEIGHBORHOOD, GET_ENTITY),
        can_vote=False,
    ),
    AgentRole(
        name="infrastructure",
        description="Specialist: hosting, DNS, TLS, web infrastructure and how the pieces connect.",
        phases=(Phase.HYPOTHESES, Phase.CORRELATION),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt=("You are an infrastructure specialist. Explain what the domains, addresses, name servers and web "
                "pages show about who runs this infrastructure and what it is for."),
    ),
    AgentRole(
        name="crypto",
        description="Specialist: cryptocurrency addresses, transaction flows, clusters and cash-out points.",
        phases=(Phase.HYPOTHESES, Phase.CORRELATION),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt=("You are a cryptocurrency specialist. Explain what the wallet addresses and payments show about "
                "how money moves and who receives it."),
    ),
    AgentRole(
        name="threat-actor",
        description="Specialist: intrusion sets, campaigns, malware and techniques known from feeds and STIX.",
        phases=(Phase.HYPOTHESES, Phase.CORRELATION),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt=("You are a threat-actor specialist. Explain which intrusion set, campaign or malware the "
                "evidence points to, and why."),
    ),
    AgentRole(
        name="darknet",
        description="Specialist: Tor hidden services, alternative markets and their ties to the clear web.",
        phases=(Phase.HYPOTHESES, Phase.CORRELATION),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt=("You are a darknet specialist. Explain what the onion services and market listings show and how "
                "they tie to the rest of the evidence."),
    ),
    AgentRole(
        name="analyst",
        description=(
            "Proposes hypotheses grounded in retrieved evidence and tests them against the graph "
            "and the corpus, citing the evidence for every claim."
        ),
        phases=(Phase.HYPOTHESES, Phase.CORRELATION),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt="You are a threat-intelligence analyst. Explain what this evidence shows is happening.",
    ),
    AgentRole(
        name="skeptic",
        description=(
            "Devil's advocate: attacks each hypothesis, looks for contradicting evidence, weak "
            "sources and alternative explanations, and records dissent."
        ),
        phases=(Phase.HYPOTHESES, Phase.CORRELATION, Phase.COUNTERFACTUALS),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt=("You are a skeptical reviewer. Look for the most innocent explanation this evidence allows, "
                "and for what contradicts the obvious one."),
    ),
    AgentRole(
        name="counterfactual",
        description=(
            "For each hypothesis, states what would have to be true for it to be wrong and checks "
            "whether the evidence rules that out."
        ),
        phases=(Phase.COUNTERFACTUALS,),
        tools=_ANALYSIS_TOOLS,
        can_vote=True,
        prompt="For each hypothesis, say what would have to be true for it to be wrong.",
    ),
    AgentRole(
        name="synthesizer",
        description=(
            "Writes the report: confidence per hypothesis, votes and dissent, and citations that "
            "resolve to stored evidence."
        ),
        phases=(Phase.SYNTHESIS,),
        tools=(CHAT, SEARCH),
        can_vote=False,
        prompt="You summarise a threat-intelligence investigation for an analyst in three sentences.",
    ),
    AgentRole(
        name="monitor",
        description=(
            "Watches the budget, repeated tool calls and out-of-scope or injected instructions in "
            "collected content (it reads stored pages by pattern, with no model), and raises warnings."
        ),
        phases=tuple(Phase),
        tools=(GET_DOCUMENT,),
        can_vote=False,
    ),
)

SPECIALISTS = ("infrastructure", "crypto", "threat-actor", "darknet")

# Other names people use for the same roles.
ALIASES: dict[str, str] = {
    "planner": "leader",
    "collector": "worker",
    "threat_actor": "threat-actor",
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
