from pydantic import BaseModel

from bev.settings import BevSettings


class MonitoringConfig(BaseModel):
    discovery_timeout_s: float = 1.0


class Settings(BevSettings):
    monitoring: MonitoringConfig = MonitoringConfig()
