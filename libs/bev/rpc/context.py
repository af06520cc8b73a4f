"""What a handler knows about the call it serves."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from bev.rpc.errors import RpcError, StatusCode

Transport = Literal["nats", "grpc"]


@dataclass
class CallContext:
    service: str
    method: str
    transport: Transport
    deadline: float  # time.monotonic() by which the caller stops waiting
    metadata: Mapping[str, str] = field(default_factory=dict)

    def time_remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def abort(self, code: StatusCode, message: str) -> NoReturn:
        raise RpcError(code, message)
