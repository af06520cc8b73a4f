from pathlib import Path

from pydantic import BaseModel, Field

from bev.settings import BevSettings


class GatewayConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024  # larger bodies get 413 before they are read
    # Document uploads (POST /api/v1/documents): one RPC carries the file, and the RPC layer takes
    # requests up to 4 MiB (BEV_RPC__MAX_REQUEST_BYTES), so stay under that.
    max_upload_bytes: int = 3 * 1024 * 1024
    # Slow clients (services/gateway/http_server.py): a request's headers must arrive within
    # header_timeout_s of the connection (or the previous response), its body within body_timeout_s
    # of the headers, else 408 and the connection closes. Beyond max_connections concurrent
    # connections or requests, 503. Idle keep-alive connections close after keep_alive_s.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    keep_alive_s: float = Field(default=5.0, gt=0)
    # A verified API key is trusted this long before it is looked up again (a revocation through
    # another gateway replica takes effect within it).
    key_cache_s: float = Field(default=5.0, ge=0)
    bootstrap_team: str = "admin"  # the team of the embedded fleet's bootstrap admin key
    # None: each RPC's own deadline, from its proto's (bev.common.v1.call) option; a number caps all.
    rpc_timeout_s: float | None = None
    # The web UI's build (index.html, assets/); None: services/gateway/web/dist, where `make setup` builds it.
    web_dir: Path | None = None


class Settings(BevSettings):
    gateway: GatewayConfig = GatewayConfig()
