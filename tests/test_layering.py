"""The layering of src/ortforge, read from its own imports (lazy ones inside functions too).

Layers, top to bottom (docs/design.md, "What may import what"): cli and the package face; commands;
tuning; searches; steps (transforms, accuracy, measure, analysis, report, zoo); core (core, data,
version). A module imports only its own layer or the ones below; nothing imports the package face;
there is no import cycle; no module grows past MAX_LINES unless docs/design.md says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ortforge"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
LAYERS = (
    ("entry", ("ortforge.cli", "ortforge.__main__")),
    ("commands", ("ortforge.commands",)),
    ("tuning", ("ortforge.tuning",)),
    ("searches", ("ortforge.searches",)),
    ("steps", ("ortforge.transforms", "ortforge.accuracy", "ortforge.measure", "ortforge.analysis", "ortforge.report", "ortforge.zoo")),
    ("core", ("ortforge.core", "ortforge.data", "ortforge.version")),
)
FACE = "ortforge"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """ortforge modules `path` imports anywhere in its body, resolved to modules (`from a import b` -> a.b when b is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target == FACE or target.startswith(FACE + ".")} - {name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) for name, path in found.items()}


def layer_of(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each: cycles, imports of the package face, imports of a higher layer, modules outside any layer."""
    problems = [f"import cycle: {' -> '.join(component)}" for component in cycles(graph)]
    for module, targets in sorted(graph.items()):
        if module == FACE:
            continue
        rank = layer_of(module)
        if rank is None:
            problems.append(f"{module}: in no layer (add it to LAYERS and to docs/design.md)")
            continue
        for target in sorted(targets):
            if target == FACE:
                problems.append(f"{module} imports the package face `ortforge`")
            elif (target_rank := layer_of(target)) is not None and target_rank < rank:
                problems.append(f"{module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[target_rank][0]}), a layer above it")
    return problems


def test_the_package_keeps_its_layers():
    assert violations(import_graph()) == []


def test_the_checker_catches_a_cycle_a_face_import_and_an_upward_import():
    graph = import_graph()
    graph["ortforge.core.model"] = graph["ortforge.core.model"] | {"ortforge.core.session"}  # session imports model: a cycle
    graph["ortforge.transforms.quantize"] = graph["ortforge.transforms.quantize"] | {"ortforge.commands.quantize", FACE}
    problems = violations(graph)
    assert any(p.startswith("import cycle:") and "ortforge.core.model" in p and "ortforge.core.session" in p for p in problems)
    assert "ortforge.transforms.quantize imports the package face `ortforge`" in problems
    assert any(p.startswith("ortforge.transforms.quantize (steps) imports ortforge.commands.quantize (commands)") for p in problems)


def test_lazy_imports_count():
    source = PACKAGE / "commands" / "run.py"
    assert "ortforge.tuning.artifact" in imports_of(source, set(modules()))  # imported inside a function


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_too_long_without_a_reason(path):
    lines = len(path.read_text().splitlines())
    relative = str(path.relative_to(PACKAGE.parent))
    assert lines <= MAX_LINES or relative in DESIGN.read_text(), f"{relative}: {lines} lines; split it or say in docs/design.md why one concern needs them"
