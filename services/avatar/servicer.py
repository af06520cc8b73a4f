"""Avatar: one expression state machine per session (investigation)."""

from __future__ import annotations

from collections import OrderedDict

from bev.avatar.v1 import avatar_pb2
from bev.avatar.v1.avatar_rpc import AvatarServicer
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.runtime import ServiceRuntime
from services.avatar.expressions import ExpressionStateMachine, Personality, ResearchEvent, ResearchState
from services.avatar.settings import AvatarConfig, Settings

_STATE_BY_PROTO = {
    avatar_pb2.RESEARCH_STATE_IDLE: ResearchState.IDLE,
    avatar_pb2.RESEARCH_STATE_COLLECTING: ResearchState.COLLECTING,
    avatar_pb2.RESEARCH_STATE_ANALYZING: ResearchState.ANALYZING,
    avatar_pb2.RESEARCH_STATE_HYPOTHESIZING: ResearchState.HYPOTHESIZING,
    avatar_pb2.RESEARCH_STATE_DEBATING: ResearchState.DEBATING,
    avatar_pb2.RESEARCH_STATE_REPORTING: ResearchState.REPORTING,
    avatar_pb2.RESEARCH_STATE_ALERT: ResearchState.ALERT,
    avatar_pb2.RESEARCH_STATE_ERROR: ResearchState.ERROR,
}
_PROTO_BY_STATE = {state: proto for proto, state in _STATE_BY_PROTO.items()}


class Avatar(AvatarServicer):
    def __init__(self, info: InstanceInfo, config: AvatarConfig) -> None:
        super().__init__(info)
        self.config = config
        self._sessions: OrderedDict[str, ExpressionStateMachine] = OrderedDict()

    def _machine(self, session_id: str, personality: str) -> ExpressionStateMachine:
        machine = self._sessions.get(session_id)
        if machine is None:
            try:
                machine = ExpressionStateMachine(Personality(personality or self.config.personality))
            except ValueError as exc:
                choices = ", ".join(p.value for p in Personality)
                raise RpcError(StatusCode.INVALID_ARGUMENT, f"unknown personality {personality!r}; one of {choices}") from exc
            self._sessions[session_id] = machine
            while len(self._sessions) > self.config.max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session_id)
        return machine

    async def MapState(self, request: avatar_pb2.MapStateRequest, ctx: CallContext) -> avatar_pb2.Expression:
        state = _STATE_BY_PROTO.get(request.state)
        if state is None:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "state is required")
        if not request.session_id:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "session_id is required")
        try:
            event = ResearchEvent(
                state=state,
                confidence=request.confidence if request.HasField("confidence") else None,
                severity=request.severity if request.HasField("severity") else None,
                progress=request.progress if request.HasField("progress") else None,
            )
            expression = self._machine(request.session_id, request.personality).transition(event)
        except ValueError as exc:
            raise RpcError(StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        return avatar_pb2.Expression(
            emotion=expression.emotion.value,
            intensity=expression.intensity,
            animation=expression.animation,
            narration=expression.narration,
            state=_PROTO_BY_STATE[expression.state],
        )


async def build(runtime: ServiceRuntime[Settings]) -> Avatar:
    return Avatar(runtime.info, runtime.settings.avatar)
