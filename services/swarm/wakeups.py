"""Wakes the watchers of an investigation as soon as one of its events is on the bus.

The event row in PostgreSQL is the truth a watch reads (services/swarm/agents.Deps.emit writes it,
then publishes it on `bev.events.investigation.<id>.<kind>`). A watch that only polled would show
each event up to a poll interval late; with one subscription per replica it reads the rows the
moment the event is published, from whichever replica wrote it. The bus is best effort, so the
poll stays, at a slower pace, as the fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.swarm.agents import EVENT_SUBJECT

_ID_TOKEN = EVENT_SUBJECT.count(".") + 1  # bev.events.investigation.<id>.<kind>


class Wakeups:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._subscription: Subscription | None = None

    @property
    def live(self) -> bool:
        """Subscribed: watchers are woken by the bus and may poll slowly."""
        return self._subscription is not None

    async def start(self, nc: NatsClient) -> None:
        self._subscription = await nc.subscribe(f"{EVENT_SUBJECT}.*.*", cb=self._on_event)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_event(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        for waiter in self._waiters.get(tokens[_ID_TOKEN], ()) if len(tokens) > _ID_TOKEN else ():
            waiter.set()

    @contextmanager
    def watching(self, investigation_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `investigation_id` publishes; the watcher clears it before reading."""
        waiter = asyncio.Event()
        self._waiters.setdefault(investigation_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(investigation_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[investigation_id]
