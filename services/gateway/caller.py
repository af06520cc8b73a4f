"""Who is calling: the API key a request came with, once the guard (services/gateway/guard.py) has
verified it. Routes get it through services/gateway/deps.py's CallerDep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bev.access import ApiKey
from bev.common.v1 import common_pb2
from bev.vocab import Tlp

Scope = Literal["read", "write", "admin"]


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: its key's record (never the key itself)."""

    key: ApiKey

    @property
    def admin(self) -> bool:
        return "admin" in self.key.scopes

    @property
    def team(self) -> str:
        return self.key.team

    @property
    def max_tlp(self) -> Tlp:
        return self.key.max_tlp

    def has(self, scope: Scope) -> bool:
        """admin holds every scope; read and write are separate (a write-only key cannot read)."""
        return self.admin or scope in self.key.scopes

    def may_read(self, tlp: Tlp) -> bool:
        return tlp.rank <= self.max_tlp.rank

    def access(self) -> common_pb2.Access:
        """What a service needs to authorise this caller per object: an admin key sees every team."""
        return common_pb2.Access(team="" if self.admin else self.team, max_tlp=self.max_tlp.to_proto(),
                                 key_id=self.key.id)
