"""One settings pattern: BEV_ env prefix, nested sections with __, per-service sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bev.settings import BevSettings
from services.embeddings.settings import Settings as EmbeddingsSettings
from services.gateway.settings import Settings as GatewaySettings


def test_env_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BEV_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BEV_NATS__URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("BEV_RPC__MAX_CONCURRENCY", "7")
    settings = BevSettings()
    assert settings.data_dir == tmp_path
    assert settings.log_dir == tmp_path / "logs"
    assert settings.nats.url == "nats://10.0.0.1:4222"
    assert settings.rpc.max_concurrency == 7


def test_service_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEV_GATEWAY__PORT", "9999")
    monkeypatch.setenv("BEV_EMBEDDINGS__BATCH_SIZE", "8")
    assert GatewaySettings().gateway.port == 9999
    assert EmbeddingsSettings().embeddings.batch_size == 8


def test_invalid_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEV_RPC__MAX_CONCURRENCY", "many")
    with pytest.raises(ValidationError):
        BevSettings()


def test_prod_refuses_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEV_ENV", "prod")
    monkeypatch.setenv("BEV_VAULT__ADDR", "https://vault:8200")
    monkeypatch.setenv("BEV_VAULT__TOKEN", "changeme")
    with pytest.raises(ValidationError, match="placeholder"):
        BevSettings()
    monkeypatch.delenv("BEV_VAULT__TOKEN")
    monkeypatch.setenv("BEV_VAULT__ADDR", "http://vault:8200")
    with pytest.raises(ValidationError, match="https"):
        BevSettings()


def test_grpc_tls_needs_all_three_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BEV_RPC__GRPC_TLS_CERT", str(tmp_path / "svc.crt"))
    with pytest.raises(ValidationError, match="grpc_tls_cert, grpc_tls_key and grpc_tls_ca"):
        BevSettings()
    monkeypatch.setenv("BEV_RPC__GRPC_TLS_KEY", str(tmp_path / "svc.key"))
    monkeypatch.setenv("BEV_RPC__GRPC_TLS_CA", str(tmp_path / "ca.crt"))
    assert BevSettings().rpc.grpc_tls == (tmp_path / "svc.crt", tmp_path / "svc.key", tmp_path / "ca.crt")
