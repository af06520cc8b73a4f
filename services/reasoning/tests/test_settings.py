"""The tier table from the environment: the compose generator's short form and the full table."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.reasoning.servicer import tier_table
from services.reasoning.settings import Settings


def test_vllm_endpoints_from_compose_become_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    # exactly what deploy/starlord/docker-compose.yml sets
    monkeypatch.setenv("BEV_REASONING__VLLM_ENDPOINTS",
                       '{"powerful": "http://vllm:8000/v1", "balanced": "http://100.64.0.1:8000/v1"}')
    monkeypatch.setenv("BEV_REASONING__BACKENDS", '[{"name": "ollama", "tier": "balanced", '
                       '"url": "http://127.0.0.1:11434/v1", "model": "qwen2.5:7b", "api_key_secret": "ollama"}]')
    table = tier_table(Settings().reasoning, "starlord")
    assert [(b.name, b.tier, b.url, b.model, b.kind) for b in table] == [
        ("ollama", "balanced", "http://127.0.0.1:11434/v1", "qwen2.5:7b", "openai"),
        ("vllm-powerful", "powerful", "http://vllm:8000/v1", "powerful", "vllm"),  # vLLM serves the tier name
        ("vllm-balanced", "balanced", "http://100.64.0.1:8000/v1", "balanced", "vllm"),
    ]
    assert table[0].api_key_secret == "ollama"


def test_bad_tables_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEV_REASONING__VLLM_ENDPOINTS", '{"huge": "http://x:8000/v1"}')
    with pytest.raises(ValidationError, match="huge"):
        Settings()
    monkeypatch.delenv("BEV_REASONING__VLLM_ENDPOINTS")
    same = '{"name": "a", "tier": "fast", "url": "http://x/v1", "model": "m"}'
    monkeypatch.setenv("BEV_REASONING__BACKENDS", f"[{same}, {same}]")
    with pytest.raises(ValidationError, match="repeated: a"):
        Settings()
