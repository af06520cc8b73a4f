from bev.settings import BevSettings


class Settings(BevSettings):
    """Swarm has no settings of its own yet; investigations (issue S1) add them here."""
