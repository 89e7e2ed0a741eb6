"""The package's floors hold: imports point down (or sideways within a
floor) and no two modules import each other, directly or through others.

Floors (README, Design): 1 math and backend (``ops/``, ``backend``,
``config``), 2 config objects, 3 Keras objects, 4 model tools. The test
parses every module with ``ast`` (imports inside functions count too), so
a lazy import cannot hide an upward dependency.
"""

import ast
import pathlib

import pytest

import keras_sparse

ROOT = pathlib.Path(keras_sparse.__file__).parent

#: Module (or package prefix) -> floor. The longest matching prefix wins.
FLOORS = {
    "ops": 1,
    "backend": 1,
    "config": 1,
    "checks": 1,
    "methods": 2,
    "schedules": 2,
    "patterns": 2,
    "scorers": 2,
    "distributions": 2,
    "controllers": 2,
    "criteria": 2,
    "quantizers": 2,
    "gates": 2,
    "layers": 3,
    "callbacks": 3,
    "regularizers": 3,
    "initializers": 3,
    "constraints": 3,
    "optimizers": 3,
    "metrics": 3,
    "utils": 3,
    "selection": 4,
    "cloning": 4,
    "convert": 4,
    "plain_forms": 4,
    "prune_at_init": 4,
    "at_init": 4,
    "quantize": 4,
    "learned": 4,
    "factorize": 4,
    "column_sampling": 4,
    "export": 4,
    "report": 4,
    "sensitivity": 4,
    "allocation": 4,
    "compression_search": 4,
    "shrink": 4,
    "testing": 4,
    "demo": 4,
    "cli": 4,
}


def _name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_name(p): p for p in ROOT.rglob("*.py")}


def floor(module):
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise KeyError(module)


def _imports(module):
    """Package modules imported by ``module`` (names without the package)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
                source = "keras_sparse" + ("." + source if source else "")
            else:
                source = node.module or ""
            names = [f"{source}.{alias.name}" for alias in node.names] + [source]
        for name in names:
            if not name.startswith("keras_sparse."):
                continue
            short = name[len("keras_sparse."):]
            if short in MODULES and short != module:
                found.add(short)
                break
    return found


GRAPH = {module: _imports(module) for module in MODULES if module}


def test_every_module_has_a_floor():
    unplaced = [m for m in GRAPH if not any(
        m == p or m.startswith(p + ".") for p in FLOORS)]
    assert not unplaced, f"give these modules a floor in FLOORS: {unplaced}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    upward = sorted(t for t in GRAPH[module] if floor(t) > floor(module))
    assert not upward, (
        f"{module} (floor {floor(module)}) imports "
        + ", ".join(f"{t} (floor {floor(t)})" for t in upward))


def test_no_import_cycles():
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
