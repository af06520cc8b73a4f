"""Status codes and the one error type every RPC ends with.

We reuse gRPC's status codes on every transport so a caller sees the same code
whether the call went over NATS or gRPC.
"""

from __future__ import annotations

from grpc import StatusCode

_BY_VALUE: dict[int, StatusCode] = {code.value[0]: code for code in StatusCode}


def code_from_int(value: int) -> StatusCode:
    return _BY_VALUE.get(value, StatusCode.UNKNOWN)


def code_to_int(code: StatusCode) -> int:
    number: int = code.value[0]
    return number


class RpcError(Exception):
    """Raised by a handler to end a call with a status, and raised to callers when a call fails."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[RpcError], tuple[StatusCode, str]]:
        return (RpcError, (self.code, self.message))


__all__ = ["RpcError", "StatusCode", "code_from_int", "code_to_int"]
