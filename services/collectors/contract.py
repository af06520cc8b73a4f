"""The collector contract, and the registry that finds collectors through entry points.

A collector declares what it consumes and produces (STIX observable types, as SpiderFoot and BBOT
modules declare watched and produced events), its rate limit, and whether it needs the network,
Tor or an API key from Vault. It is an async generator of findings; storing them (graph,
observations, corpus) is the caller's job, so a collector runs the same inside the collectors
service and inside a Celery task.

Registering one is one file and one line: a module with a class taking the collectors' settings,
and an entry point in the group ``bev.collectors``::

    [project.entry-points."bev.collectors"]
    shodan = "mypackage.shodan:ShodanCollector"

The built-in collectors are registered the same way, in this repository's pyproject.toml.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from services.collectors.errors import CollectorError, InvalidTarget, TargetRefused
from services.collectors.observables import Observable, Relation

if TYPE_CHECKING:
    from services.collectors.fetch import Fetcher
    from services.collectors.settings import CollectorsConfig

# The errors are part of the contract a collector is written against; they live in their own
# module so that fetch.py (which the contract names) can raise them without importing the contract.
__all__ = [
    "ENTRY_POINT_GROUP", "CollectContext", "Collector", "CollectorError", "CollectorFactory", "Document",
    "Finding", "InvalidTarget", "TargetRefused", "collector_factories", "load_collectors",
]

ENTRY_POINT_GROUP = "bev.collectors"


@dataclass(frozen=True)
class Document:
    """Text a collector found, for the embeddings corpus."""

    content: bytes
    media_type: str
    uri: str
    title: str = ""


@dataclass(frozen=True)
class Finding:
    """One thing a collector observed: an entity, its relations, where it was seen."""

    observable: Observable
    source: str  # URL, resolver or API the evidence came from
    relations: tuple[Relation, ...] = ()
    confidence: int = 0  # 0 = the collector's default
    document: Document | None = None


@dataclass
class CollectContext:
    """What one collection run may use: the guarded fetcher, and who asked."""

    fetcher: Fetcher
    investigation_id: str = ""
    # A marked investigation makes no direct connection: HTTP goes through Tor, and collectors
    # that cannot use Tor (DNS, WHOIS) refuse.
    opsec: bool = False
    secrets: Mapping[str, str] = field(default_factory=dict)  # the collector's API key secret, if any


@runtime_checkable
class Collector(Protocol):
    name: str
    description: str
    consumes: frozenset[str]  # observable types accepted as targets
    produces: frozenset[str]  # observable types it may yield
    rate_limit_per_s: float  # calls per second to its source; excess calls wait, they do not fail
    default_confidence: int
    needs_network: bool
    needs_tor: bool
    api_key_secret: str  # Vault secret holding its API key; "" = none

    def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]: ...


CollectorFactory = Callable[["CollectorsConfig"], Collector]


def collector_factories() -> dict[str, CollectorFactory]:
    """Every installed ``bev.collectors`` entry point, the built-ins included."""
    factories: dict[str, CollectorFactory] = {point.name: point.load() for point in entry_points(group=ENTRY_POINT_GROUP)}
    if not factories:
        raise RuntimeError(f"no {ENTRY_POINT_GROUP!r} entry points: is the project installed (`make setup`)?")
    return factories


def load_collectors(config: CollectorsConfig) -> dict[str, Collector]:
    collectors: dict[str, Collector] = {}
    for name, factory in collector_factories().items():
        collector = factory(config)
        if not isinstance(collector, Collector):
            raise TypeError(f"collector {name!r} ({factory!r}) does not satisfy the Collector protocol")
        if collector.name != name:
            raise TypeError(f"collector registered as {name!r} calls itself {collector.name!r}")
        collectors[name] = collector
    return collectors
