from pydantic import BaseModel

from bev.settings import BevSettings


class GatewayConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024  # larger bodies get 413 before they are read
    # Document uploads (POST /api/v1/documents): one RPC carries the file, and the RPC layer takes
    # requests up to 4 MiB (BEV_RPC__MAX_REQUEST_BYTES), so stay under that.
    max_upload_bytes: int = 3 * 1024 * 1024
    rpc_timeout_s: float = 60.0


class Settings(BevSettings):
    gateway: GatewayConfig = GatewayConfig()
