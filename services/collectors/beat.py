"""`python -m services.collectors.beat`: the one Celery beat, enqueueing a poll per configured feed
and TAXII source at its interval. Run exactly one per fleet (the manifest places it once).

Health: each scheduler tick touches `<data_dir>/run/collectors-beat.alive` (ticks come at least
every beat_max_loop_interval); the container healthcheck reads its age.

Metrics: /metrics on BEV_TELEMETRY__METRICS_PORT: process CPU and memory, data-dir disk space.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

from services.collectors.celery_process import celery_app, serve_metrics

MAX_LOOP_S = 15


class AliveScheduler(PersistentScheduler):
    alive_path = Path("collectors-beat.alive")

    def setup_schedule(self) -> None:
        super().setup_schedule()
        # A source never polled is due now, not one interval after the beat first starts (celery's
        # default): an operator who adds a feed, or a fresh fleet, expects its items at once. Polls
        # are idempotent per source and interval (tasks.poll_source), so this never doubles one.
        for entry in self.schedule.values():
            if entry.total_run_count == 0:
                entry.last_run_at = datetime(1970, 1, 1, tzinfo=UTC)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.alive_path.touch()
        interval: float = super().tick(*args, **kwargs)
        return interval


def main() -> None:
    settings, app = celery_app("collectors-beat")
    serve_metrics(settings, "collectors-beat")
    run_dir = settings.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    AliveScheduler.alive_path = run_dir / "collectors-beat.alive"
    app.conf.beat_max_loop_interval = MAX_LOOP_S
    app.start(["beat", "--loglevel=INFO", f"--schedule={run_dir / 'collectors-beat-schedule'}",
               f"--scheduler={AliveScheduler.__module__}:{AliveScheduler.__name__}"])


if __name__ == "__main__":
    main()
