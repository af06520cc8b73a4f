"""A service's shape, read from its protobuf descriptor: methods, message types, NATS subjects."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from bev.common.v1 import common_pb2

# For a method whose proto declares no call policy (tests/test_protos.py requires one for every
# fleet method, so this only serves contracts outside the fleet).
DEFAULT_DEADLINE_S = 30.0


def _call_policy(method: MethodDescriptor) -> common_pb2.CallPolicy | None:
    options = method.GetOptions()
    if not options.HasExtension(common_pb2.call):
        return None
    policy: common_pb2.CallPolicy = options.Extensions[common_pb2.call]
    return policy


@dataclass(frozen=True)
class MethodDef:
    name: str
    request_type: type[Message]
    response_type: type[Message]
    server_streaming: bool
    subject: str    # NATS: bev.<service>.v1.<Method>
    grpc_path: str  # gRPC: /bev.<service>.v1.<Service>/<Method>
    # From the method's `(bev.common.v1.call)` option in its proto: the one place each is set.
    deadline_s: float = DEFAULT_DEADLINE_S
    idempotent: bool = False
    declared: bool = False  # whether the proto declares a call policy at all


@dataclass(frozen=True)
class ServiceDef:
    full_name: str  # bev.reasoning.v1.Reasoning
    package: str    # bev.reasoning.v1
    name: str       # reasoning
    methods: dict[str, MethodDef]

    @property
    def queue_group(self) -> str:
        """Replicas of one service share load: one queue group per service, fleet-wide."""
        return f"bev.{self.name}"

    @property
    def micro_name(self) -> str:
        """The $SRV discovery name (NATS micro names allow no dots)."""
        return f"bev-{self.name}"


@cache
def service_def(descriptor: ServiceDescriptor) -> ServiceDef:
    package = descriptor.file.package
    parts = package.split(".")
    if len(parts) != 3 or parts[0] != "bev":
        raise ValueError(f"service {descriptor.full_name}: package must be bev.<service>.v<N>, got {package}")
    methods: dict[str, MethodDef] = {}
    for method in descriptor.methods:
        if method.client_streaming:
            raise ValueError(f"{descriptor.full_name}.{method.name}: client streaming is not supported")
        policy = _call_policy(method)
        if policy is not None and policy.deadline_s <= 0:
            raise ValueError(f"{descriptor.full_name}.{method.name}: (bev.common.v1.call).deadline_s must be > 0")
        methods[method.name] = MethodDef(
            name=method.name,
            request_type=GetMessageClass(method.input_type),
            response_type=GetMessageClass(method.output_type),
            server_streaming=method.server_streaming,
            subject=f"{package}.{method.name}",
            grpc_path=f"/{descriptor.full_name}/{method.name}",
            deadline_s=policy.deadline_s if policy is not None else DEFAULT_DEADLINE_S,
            idempotent=policy.idempotent if policy is not None else False,
            declared=policy is not None,
        )
    return ServiceDef(full_name=descriptor.full_name, package=package, name=parts[1], methods=methods)
