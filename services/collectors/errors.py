"""What a collection raises when it cannot go on (part of the collector contract, contract.py)."""

from __future__ import annotations


class CollectorError(Exception):
    """A collection that cannot go on; str() is one line naming the cause (bad target, unreachable)."""


class TargetRefused(CollectorError):
    """Policy refused the request (SSRF guard, robots.txt, Content-Type, size, OPSEC)."""


class InvalidTarget(CollectorError):
    """The target is malformed or not something this collector consumes."""
