"""The layout's rules, checked on the source: libs/ never imports services/, and no import cycle
exists among the project's modules (imports inside functions and under TYPE_CHECKING count too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = "/v1/"  # protoc output: generated, acyclic by construction


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root, prefix in ((REPO / "libs" / "bev", "bev"), (REPO / "services", "services")):
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            if GENERATED in f"/{rel.as_posix()}/" or "tests" in rel.parts:
                continue
            parts = [prefix, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules `module` imports; `from a import b` counts as a.b when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:  # bev.rpc.errors.RpcError -> bev.rpc.errors
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def test_libs_never_import_services() -> None:
    offenders = sorted(f"{m} -> {d}" for m, deps in _graph().items() if m.startswith("bev")
                       for d in deps if d.startswith("services"))
    assert not offenders, offenders


def test_services_never_import_each_other() -> None:
    """A service talks to another over RPC; what they share (vocabularies, the STIX id scheme) is in libs."""
    def service(module: str) -> str:
        return module.split(".")[1] if module.startswith("services.") and module.count(".") >= 1 else ""

    offenders = sorted(f"{m} -> {d}" for m, deps in _graph().items() if service(m) and ".testing" not in m
                       for d in deps if service(d) and service(d) != service(m))
    assert not offenders, offenders


def test_no_import_cycles() -> None:
    graph = _graph()
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles
