"""The layout's rules, checked on the source: TensorFlow only on the training side, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "mnist_tflite"
TRAINING_FRAMEWORKS = ("tensorflow", "keras", "tf_keras", "tensorflow_model_optimization")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str | None = None) -> list[tuple[str, int]]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        here = _module_name(path)
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            # `from pkg import module` imports the module too
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        targets = {target for target, _ in _imports(path)}
        for target in targets:
            # `from pkg import module` needs the module, not the package's __init__
            submodule_of_target = any(t.startswith(f"{target}.") and t in modules for t in targets)
            if target in modules and target != name and not submodule_of_target:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_only_the_training_side_imports_training_frameworks():
    offenders = []
    for path in PKG.rglob("*.py"):
        if "training" in path.relative_to(PKG).parts:
            continue
        for target, line in _imports(path):
            if target.split(".")[0] in TRAINING_FRAMEWORKS:
                offenders.append(f"{path.relative_to(PKG.parent)}:{line} imports {target}")
    assert offenders == []


def test_the_checker_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import tensorflow as tf\n    from keras import layers\n")
    assert [t for t, _ in _imports(module, package="")] == ["tensorflow", "keras", "keras.layers"]


def test_no_import_cycles_counting_function_level_imports():
    graph = _graph()
    assert len(graph) > 25 and graph["mnist_tflite.cli"]  # the graph was really built
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("side", ["edge", "serve", "micro", "report"])
def test_edge_side_never_reaches_the_training_side(side):
    graph = _graph()
    reached, todo = set(), [m for m in graph if m.startswith(f"mnist_tflite.{side}.")]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += graph[m]
    assert not [m for m in reached if m.startswith("mnist_tflite.training")]
