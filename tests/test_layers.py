"""The package's layers, enforced: every import inside `src/dynadnn` (module-level and function-level alike)
goes down the list below or sideways within one layer, and no modules import each other in a cycle.

`LAYERS` is the one place the order is written (docs/architecture.md draws it). A module belongs to the
layer of the longest entry that names it or a package above it (`dynadnn.search.nsga2` -> `dynadnn.search`);
a new module that matches no entry fails `test_every_module_has_a_layer` until it is given one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "dynadnn"

# Lowest first. Modules of one layer may import each other (without cycles).
LAYERS: list[tuple[str, ...]] = [
    ("dynadnn.errors", "dynadnn.presets"),
    ("dynadnn.fileio", "dynadnn.validate"),
    ("dynadnn.space",),
    ("dynadnn.data",),
    ("dynadnn.supernet.plan",),
    ("dynadnn.supernet.static",),
    ("dynadnn.supernet.network",),
    ("dynadnn.supernet.checkpoint",),
    ("dynadnn.supernet",),
    ("dynadnn.zoo",),  # the registry of shipped models (registers the `zoo:` checkpoint scheme)
    ("dynadnn.provenance",),
    ("dynadnn.evaluate",),
    ("dynadnn.dynamic",),
    ("dynadnn.deploy",),
    ("dynadnn.train",),
    ("dynadnn.predict",),
    ("dynadnn.search",),
    ("dynadnn.family",),
    ("dynadnn.selection",),
    ("dynadnn.platform",),
    ("dynadnn.runtime",),
    ("dynadnn.report", "dynadnn.zoo.ship", "dynadnn.pipeline"),  # pipeline: the demo's whole path
    ("dynadnn.cli",),
    ("dynadnn", "dynadnn.__main__"),  # the facade (`dynadnn/__init__.py`) and `python -m dynadnn`
]


def module_files(root: Path = ROOT) -> dict[str, tuple[Path | None, bool]]:
    """`{dotted name: (source file or None for a compiled extension, is a package)}` of every module."""
    out: dict[str, tuple[Path | None, bool]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root.parent)
        if path.suffix == ".py":
            parts = list(rel.with_suffix("").parts)
            package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if package else parts)] = (path, package)
        elif path.suffix in (".so", ".pyd"):
            parts = list(rel.parent.parts) + [path.name.split(".")[0]]
            out.setdefault(".".join(parts), (None, False))
    return out


def imports_of(name: str, path: Path, package: bool, modules: dict) -> set[str]:
    """The project modules `name` imports anywhere in its file, relative imports resolved. `from A import b`
    counts as importing `A.b` when that is a module, else `A`."""
    found: set[str] = set()
    here = name if package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def layer_of(name: str) -> int | None:
    best, where = -1, None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if name == entry or (entry != "dynadnn" and name.startswith(entry + ".")):
                if len(entry) > best:
                    best, where = len(entry), i
    return where


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, package, modules) for name, (path, package) in modules.items()
            if path is not None}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = layer_of(name), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{name} (layer {mine}: {LAYERS[mine][0]}) imports {target} "
                           f"(layer {theirs}: {LAYERS[theirs][0]})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walk_sees_the_package(graph):
    assert {"dynadnn.errors", "dynadnn.supernet.network", "dynadnn.cli"} <= set(graph)
    assert "dynadnn.supernet.plan" in graph["dynadnn.supernet.static"]  # relative, module level
    assert "dynadnn.data" in graph["dynadnn.deploy"]


def test_every_module_has_a_layer(graph):
    missing = [name for name in graph if layer_of(name) is None]
    assert not missing, f"modules with no layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_module_imports_a_higher_layer(graph):
    bad = upward_imports(graph)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The walker resolves relative and function-level imports; an upward import and a cycle are found."""
    pkg = tmp_path / "dynadnn"
    (pkg / "predict").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "predict" / "__init__.py").write_text("")
    (pkg / "predict" / "latency.py").write_text("def f():\n    from ..runtime import knobs\n")
    (pkg / "runtime").mkdir()
    (pkg / "runtime" / "__init__.py").write_text("from ..predict import latency\n")
    (pkg / "runtime" / "knobs.py").write_text("from ..errors import UserError\n")
    modules = module_files(pkg)
    g = {n: imports_of(n, p, is_pkg, modules) for n, (p, is_pkg) in modules.items()}
    assert g["dynadnn.predict.latency"] == {"dynadnn.runtime.knobs"}
    assert g["dynadnn.runtime"] == {"dynadnn.predict.latency"}
    low, high = layer_of("dynadnn.predict.latency"), layer_of("dynadnn.runtime.knobs")
    assert upward_imports(g) == [f"dynadnn.predict.latency (layer {low}: dynadnn.predict) imports dynadnn.runtime.knobs "
                                 f"(layer {high}: dynadnn.runtime)"]
    (pkg / "runtime" / "knobs.py").write_text("import dynadnn.runtime\n")
    g = {n: imports_of(n, p, is_pkg, modules) for n, (p, is_pkg) in modules.items()}
    assert find_cycle(g) == ["dynadnn.predict.latency", "dynadnn.runtime.knobs", "dynadnn.runtime",
                             "dynadnn.predict.latency"]
