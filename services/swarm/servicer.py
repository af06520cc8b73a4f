"""Swarm: the agent-role catalog now; investigations, coordination and votes grow here."""

from __future__ import annotations

from bev.rpc import CallContext
from bev.runtime import ServiceRuntime
from bev.swarm.v1 import swarm_pb2
from bev.swarm.v1.swarm_rpc import SwarmServicer
from services.swarm.roles import ROLES, AgentRole, Phase, roles_for_phase
from services.swarm.settings import Settings

_PHASE_BY_PROTO = {
    swarm_pb2.PHASE_INGESTION: Phase.INGESTION,
    swarm_pb2.PHASE_HYPOTHESES: Phase.HYPOTHESES,
    swarm_pb2.PHASE_CORRELATION: Phase.CORRELATION,
    swarm_pb2.PHASE_COUNTERFACTUALS: Phase.COUNTERFACTUALS,
    swarm_pb2.PHASE_SYNTHESIS: Phase.SYNTHESIS,
}
_PROTO_BY_PHASE = {phase: proto for proto, phase in _PHASE_BY_PROTO.items()}


def _to_proto(role: AgentRole) -> swarm_pb2.AgentRole:
    return swarm_pb2.AgentRole(
        name=role.name,
        description=role.description,
        phases=[_PROTO_BY_PHASE[p] for p in role.phases],
        tools=list(role.tools),
        can_vote=role.can_vote,
    )


class Swarm(SwarmServicer):
    async def ListRoles(self, request: swarm_pb2.ListRolesRequest, ctx: CallContext) -> swarm_pb2.ListRolesResponse:
        phase = _PHASE_BY_PROTO.get(request.phase)
        roles = ROLES if phase is None else roles_for_phase(phase)
        return swarm_pb2.ListRolesResponse(roles=[_to_proto(r) for r in roles])


async def build(runtime: ServiceRuntime[Settings]) -> Swarm:
    return Swarm(runtime.info)
