"""Generated code in libs/ must match protos/: regenerate into a temp dir and compare byte for byte."""

from __future__ import annotations

from pathlib import Path

from bev.codegen import generate

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path: Path) -> None:
    written = generate(REPO / "protos", tmp_path)
    assert written, "no protos found"
    stale = [str(p) for p in written if (tmp_path / p).read_bytes() != (REPO / "libs" / p).read_bytes()]
    assert not stale, f"generated code is stale; run `make protos` and commit: {stale}"
    committed = {p.relative_to(REPO / "libs") for p in (REPO / "libs" / "bev").glob("*/v1/*") if p.suffix in (".py", ".pyi")}
    orphans = sorted(str(p) for p in committed - set(written))
    assert not orphans, f"generated files without a proto; run `make protos` (it cleans): {orphans}"


def test_every_fleet_service_has_a_contract_with_health() -> None:
    from bev.fleet import client_class
    from bev.manifest import load_manifest

    for service in load_manifest().service_names():
        definition = client_class(service).SERVICE
        assert "Health" in definition.methods, service
        assert definition.methods["Health"].subject == f"bev.{service}.v1.Health"
        assert len(definition.methods) >= (1 if service == "gateway" else 2), f"{service} serves only Health"


def test_every_fleet_method_declares_its_call_policy() -> None:
    """Each RPC's deadline (and whether it may be retried) is set once, on the method in its proto."""
    from bev.fleet import client_class
    from bev.manifest import load_manifest

    for service in load_manifest().service_names():
        for method in client_class(service).SERVICE.methods.values():
            assert method.declared, f"{method.subject} has no (bev.common.v1.call) option"
            assert 0 < method.deadline_s <= 600, method.subject
            if method.name == "Health":
                assert method.idempotent and method.deadline_s <= 5, method.subject
