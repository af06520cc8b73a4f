from pydantic import BaseModel, Field

from bev.settings import BevSettings


class HealingConfig(BaseModel):
    """Self-healing limits (services/monitoring/healing.py)."""

    enabled: bool = True
    dry_run: bool = False       # record what would be done, do nothing
    max_actions: int = Field(default=3, ge=0)   # fleet-wide, per window
    per_s: float = Field(default=600.0, gt=0)   # the window
    cooldown_s: float = Field(default=120.0, ge=0)  # the same target is not acted on again within this
    drain_s: float = Field(default=300.0, gt=0)     # how long a drained backend stays out of routing
    pause_s: float = Field(default=900.0, gt=0)     # how long a failing collector is paused


class MonitoringConfig(BaseModel):
    discovery_timeout_s: float = 1.0
    # Where Prometheus and Alertmanager answer (the supervisor sets both; empty = the watch is off
    # and only FleetHealth answers).
    prometheus_url: str = ""
    alertmanager_url: str = ""
    interval_s: float = Field(default=5.0, gt=0)  # one watch cycle: alerts, anomalies, correlation, healing
    down_after: int = Field(default=2, ge=1)      # consecutive failed scrapes before an instance is down
    rate_window: str = "30s"                      # PromQL range of the rates the anomaly signals read
    anomaly_every_s: float = Field(default=15.0, gt=0)  # one point per series this often (anomaly.py's tuning)
    settle_s: float = Field(default=2.0, ge=0)    # an incident is published after this (correlation.py)
    resolve_after_s: float = Field(default=15.0, ge=0)  # quiet time before an incident resolves
    alertmanager_every_s: float = Field(default=60.0, gt=0)  # open incidents re-sent this often
    healing: HealingConfig = HealingConfig()


class Settings(BevSettings):
    monitoring: MonitoringConfig = MonitoringConfig()
