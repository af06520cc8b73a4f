"""Typed settings: one pydantic-settings pattern for every process.

Every process reads `BEV_*` environment variables. Sections nest with `__`:
`BEV_NATS__URL`, `BEV_VAULT__ADDR`, `BEV_REASONING__N_CTX`. A service subclasses
`BevSettings` and adds its own section model (see services/*/settings.py).
`BEV_DATA_DIR` moves all state (engine data, logs, caches) at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "dev", "devtoken", "root", "password"}


class NatsSettings(BaseModel):
    # One URL, or a cluster's URLs separated by commas (the client tries them all).
    url: str = "nats://127.0.0.1:4222"
    # Credentials come from Vault (secret `nats`) unless set here for a dev run.
    user: str = ""
    password: str = ""
    # How long a starting process keeps trying before it exits with one clear line.
    connect_timeout_s: float = 15.0
    # TLS to NATS (a cluster's client port): PEM files of the CA that signed the servers'
    # certificates and of this client's own certificate and key (servers with `verify` want one).
    # TLS is on when tls_ca_file is set.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @model_validator(mode="after")
    def _tls_files_fit(self) -> NatsSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("set both nats tls_cert_file and tls_key_file, or neither")
        if self.tls_cert_file and not self.tls_ca_file:
            raise ValueError("nats tls_cert_file needs tls_ca_file (the CA of the servers' certificates)")
        return self


class VaultSettings(BaseModel):
    addr: str = "http://127.0.0.1:8200"
    # AppRole login (production and `make run`): role_id + a single-use secret_id.
    role_id: str = ""
    secret_id: str = ""
    # Token login, for an operator's shell only; services use AppRole.
    token: str = ""
    mount: str = "secret"
    timeout_s: float = 5.0
    ca_cert: str = ""  # PEM file of the CA behind Vault's TLS certificate (production)


class RpcSettings(BaseModel):
    default_timeout_s: float = 30.0
    max_request_bytes: int = 4 * 1024 * 1024
    # Requests one process works on at once; more wait in NATS (backpressure, not memory).
    max_concurrency: int = 64
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0  # 0 = pick a free port; the port is published in $SRV metadata
    # mTLS for gRPC (production): PEM files of this service's certificate and key, and the CA that
    # signs the clients allowed in. All three, or none (plaintext on the node's own address).
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_tls_ca: Path | None = None

    @model_validator(mode="after")
    def _all_or_no_tls_files(self) -> RpcSettings:
        given = [f is not None for f in (self.grpc_tls_cert, self.grpc_tls_key, self.grpc_tls_ca)]
        if any(given) and not all(given):
            raise ValueError("set all of grpc_tls_cert, grpc_tls_key and grpc_tls_ca, or none")
        return self

    @property
    def grpc_tls(self) -> tuple[Path, Path, Path] | None:
        if self.grpc_tls_cert and self.grpc_tls_key and self.grpc_tls_ca:
            return self.grpc_tls_cert, self.grpc_tls_key, self.grpc_tls_ca
        return None


class TelemetrySettings(BaseModel):
    log_level: str = "INFO"
    log_json: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0 = pick a free port; published in $SRV metadata
    # Traces are always created (trace ids reach logs and headers); export is opt-in.
    trace_exporter: Literal["none", "console", "otlp"] = "none"
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)  # of new traces, when exporting
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"


class PrometheusSettings(BaseModel):
    """The one-machine fleet's Prometheus (`bev up` starts it); ORACLE1's is configured in deploy/."""

    scrape_interval_s: float = Field(default=5.0, gt=0)
    evaluation_interval_s: float = Field(default=5.0, gt=0)


class BevSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BEV_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    env: Literal["dev", "prod"] = "dev"
    node: str = "local"
    data_dir: Path = Field(default=Path(".bev"))
    nats: NatsSettings = NatsSettings()
    vault: VaultSettings = VaultSettings()
    rpc: RpcSettings = RpcSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    prometheus: PrometheusSettings = PrometheusSettings()

    @model_validator(mode="after")
    def _refuse_placeholders_in_prod(self) -> BevSettings:
        if self.env == "prod":
            if self.vault.token and self.vault.token.lower() in PLACEHOLDER_SECRETS:
                raise ValueError("BEV_VAULT__TOKEN is a placeholder; refusing to start with env=prod")
            if not self.vault.addr.startswith("https://"):
                raise ValueError("BEV_VAULT__ADDR must use https:// with env=prod")
        return self

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"
