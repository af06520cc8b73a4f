"""One RPC layer: a servicer written once, served over NATS (internal) and gRPC (external)."""

from bev.rpc.client import Client
from bev.rpc.context import CallContext
from bev.rpc.errors import RpcError, StatusCode
from bev.rpc.servicer import InstanceInfo, Servicer
from bev.rpc.starting import not_serving_yet, while_starting

__all__ = ["CallContext", "Client", "InstanceInfo", "RpcError", "Servicer", "StatusCode", "not_serving_yet",
           "while_starting"]
