"""The modules of `gateway/engine/` import each other without a cycle, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.engine

ENGINE_DIR = Path(gateway.engine.__file__).parent
PACKAGE = "gateway.engine"


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (top level, functions, TYPE_CHECKING)."""
    modules = {path.stem for path in package_dir.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((package_dir / f"{name}.py").read_text())
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` names a module; `from pkg.mod import x` names pkg.mod.
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                head, _, tail = target.partition(f"{package}.")
                if not head and tail.split(".")[0] in modules:
                    edges.add(tail.split(".")[0])
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_engine_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph(ENGINE_DIR, PACKAGE)
    assert {"basemodel", "quantize", "checksum", "vllm_plugin"} <= set(graph)
    assert find_cycle(graph) is None


def test_model_preparation_and_quantization_share_the_checksum_module() -> None:
    graph = import_graph(ENGINE_DIR, PACKAGE)
    assert graph["quantize"] == {"checksum"}
    assert "basemodel" not in graph["quantize"]


def test_a_lazy_import_back_is_reported_as_a_cycle(tmp_path: Path) -> None:
    # The shape this package had: a top-level import one way, a function-level one back.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("from pkg.a import f\n\ndef g():\n    return f\n")
    (package / "c.py").write_text("from pkg import a\n")

    assert find_cycle(import_graph(package, "pkg")) in (["a", "b", "a"], ["b", "a", "b"])
    assert import_graph(package, "pkg")["c"] == {"a"}
