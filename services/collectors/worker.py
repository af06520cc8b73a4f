"""`python -m services.collectors.worker`: the Celery worker that runs collection tasks.

Health: while its consumer loop runs and its broker connection is up, the worker touches
`<data_dir>/run/collectors-worker.alive` every ALIVE_EVERY_S; the container healthcheck reads its age.

Metrics: the main process serves /metrics on BEV_TELEMETRY__METRICS_PORT (the prefork children
serve nothing): bev_celery_queue_depth{queue} read from the broker at each scrape, process CPU and
memory (the main process's), data-dir disk space, and every count the children record (graph
writes, collector runs), which prometheus_client's multiprocess mode keeps in files under a
temporary directory that the main process sums. In that mode a Gauge set in a child is exported per
pid (its multiprocess_mode decides how): prefer counters there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from celery import bootsteps

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
    # Set before anything imports prometheus_client (celery_process does): it picks file-backed
    # values at import, which the forked children then write too. This worker's own directory.
    metrics_dir = tempfile.mkdtemp(prefix="bev-collectors-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    owner = os.getpid()
    try:
        _run()
    finally:
        if os.getpid() == owner:  # never a child's exit: the directory is the main process's
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _forget_child(pid: int, **_: Any) -> None:
    """A prefork child exiting: its live gauges go with it (its counts stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _run() -> None:
    from celery.signals import worker_process_shutdown

    from bev.telemetry import multiprocess_registry
    from services.collectors.celery_process import CeleryQueueDepth, celery_app, serve_metrics

    settings, app = celery_app("collectors-worker")
    registry = multiprocess_registry()
    queue_depth = CeleryQueueDepth.of(app)
    if queue_depth is not None:
        registry.register(queue_depth)
    serve_metrics(settings, "collectors-worker", registry)
    worker_process_shutdown.connect(_forget_child, weak=False)

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
