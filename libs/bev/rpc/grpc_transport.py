"""RPC over gRPC (grpc.aio) for programs outside the fleet: the same servicer, health, reflection.

Handlers receive raw bytes (no grpc deserializer) so parsing, size limits and error mapping
go through the same Dispatcher as NATS: garbage gets INVALID_ARGUMENT on both transports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bev.rpc.definition import MethodDef
from bev.rpc.dispatch import Dispatcher, metadata_dict
from bev.rpc.errors import RpcError, StatusCode
from bev.rpc.servicer import Servicer

# Leave room above the service's own limit so oversize requests reach the Dispatcher and get
# its RESOURCE_EXHAUSTED message rather than a transport-level rejection.
_TRANSPORT_SLACK_BYTES = 64 * 1024


def _identity(data: bytes) -> bytes:
    return data


class TlsFiles:
    """PEM paths for mTLS (production); absent in the embedded one-machine fleet."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.cert, self.key, self.ca = cert, key, ca


class GrpcRpcServer:
    def __init__(
        self,
        servicer: Servicer,
        *,
        host: str,
        port: int,
        max_request_bytes: int,
        default_timeout_s: float,
        tls: TlsFiles | None = None,
    ) -> None:
        self._dispatcher = Dispatcher(servicer, max_request_bytes=max_request_bytes, default_timeout_s=default_timeout_s)
        self._definition = servicer.SERVICE
        self._host, self._port, self._tls = host, port, tls
        limit = max_request_bytes + _TRANSPORT_SLACK_BYTES
        self._server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1)]
        )
        self._health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        definition = self._definition
        handlers = {method.name: self._method_handler(method) for method in definition.methods.values()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(definition.full_name, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (definition.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        address = f"{self._host}:{self._port}"
        if self._tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self._tls.key.read_bytes(), self._tls.cert.read_bytes())],
                root_certificates=self._tls.ca.read_bytes(),
                require_client_auth=True,
            )
            self.port = self._server.add_secure_port(address, credentials)
        await self._server.start()
        for name in ("", definition.full_name):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _method_handler(self, method: MethodDef) -> grpc.RpcMethodHandler:
        dispatcher = self._dispatcher

        def context_for(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            remaining = context.time_remaining()
            return dispatcher.context(method, "grpc", remaining, metadata_dict(context.invocation_metadata()))

        if method.server_streaming:

            async def stream(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
                try:
                    async for payload in dispatcher.stream(method, data, context_for(context)):
                        yield payload
                except RpcError as error:
                    await context.abort(error.code, error.message)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_identity, response_serializer=_identity
            )

        async def unary(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            try:
                return await dispatcher.unary(method, data, context_for(context))
            except RpcError as error:
                await context.abort(error.code, error.message)
                raise  # abort raises; this line is never reached

        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_identity, response_serializer=_identity)

    async def stop(self, grace_s: float = 10.0) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)


class GrpcTransport:
    """The caller's side of RPC over gRPC."""

    def __init__(self, address: str, *, credentials: grpc.ChannelCredentials | None = None) -> None:
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._unary: dict[str, Callable[..., Awaitable[bytes]]] = {}
        self._stream: dict[str, Callable[..., Any]] = {}

    async def unary_elsewhere(self, method: MethodDef, payload: bytes, timeout_s: float,
                              metadata: Mapping[str, str]) -> bytes:
        """gRPC goes to one address: a retry goes there again."""
        return await self.unary(method, payload, timeout_s, metadata)

    async def unary(self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]) -> bytes:
        call = self._unary.get(method.grpc_path)
        if call is None:
            call = self._unary[method.grpc_path] = self._channel.unary_unary(
                method.grpc_path, request_serializer=_identity, response_deserializer=_identity
            )
        try:
            response: bytes = await call(payload, timeout=timeout_s, metadata=tuple(metadata.items()))
        except grpc.aio.AioRpcError as exc:
            raise RpcError(exc.code(), exc.details() or "") from exc
        return response

    async def stream(
        self, method: MethodDef, payload: bytes, timeout_s: float, metadata: Mapping[str, str]
    ) -> AsyncIterator[bytes]:
        call_factory = self._stream.get(method.grpc_path)
        if call_factory is None:
            call_factory = self._stream[method.grpc_path] = self._channel.unary_stream(
                method.grpc_path, request_serializer=_identity, response_deserializer=_identity
            )
        call = call_factory(payload, timeout=timeout_s, metadata=tuple(metadata.items()))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise RpcError(exc.code(), exc.details() or "") from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()


__all__ = ["GrpcRpcServer", "GrpcTransport", "StatusCode", "TlsFiles"]
