"""`python -m services.collectors.worker`: the Celery worker that runs collection tasks.

Health: while its consumer loop runs and its broker connection is up, the worker touches
`<data_dir>/run/collectors-worker.alive` every ALIVE_EVERY_S; the container healthcheck reads its age.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from celery import bootsteps

from services.collectors.celery_process import celery_app

ALIVE_EVERY_S = 15.0


class AliveFile(bootsteps.StartStopStep):
    """Touch the alive file from the consumer's own timer, only while connected to the broker."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.connection:Connection"}
    path = Path("collectors-worker.alive")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None

    def start(self, parent: Any) -> None:
        self.touch(parent)
        self.timer_ref = parent.timer.call_repeatedly(ALIVE_EVERY_S, self.touch, (parent,), priority=10)

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()

    def touch(self, parent: Any) -> None:
        if parent.connection is not None and parent.connection.connected:
            self.path.touch()


def main() -> None:
    settings, app = celery_app("collectors-worker")
    run_dir = settings.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    AliveFile.path = run_dir / "collectors-worker.alive"
    app.steps["consumer"].add(AliveFile)
    celery = settings.collectors.celery
    app.worker_main([
        "worker", f"--pool={celery.pool}", f"--concurrency={celery.concurrency}", "--loglevel=INFO",
        f"--hostname=collectors-{settings.node}@%h", "--without-gossip", "--without-mingle",
    ])


if __name__ == "__main__":
    main()
