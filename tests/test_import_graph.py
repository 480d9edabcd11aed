"""No import cycle anywhere in `src/ettin_cli`, and imports that point down the layering CONTRIBUTING describes
(`core < io < label < measure < data < publish < train < commands`).

The graph is built from the source with `ast` (nothing is imported), from every `import` statement: at module top
and inside functions alike, since a lazy import still makes the two modules depend on each other and a cycle
hidden in a function is how the one in `publish/` went unnoticed (issue #22).
"""

from __future__ import annotations

import ast
from pathlib import Path

import ettin_cli

PACKAGE = "ettin_cli"
LAYERS = ["core", "io", "label", "measure", "data", "publish", "train", "commands"]


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` under the package (a package is its `__init__`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its body (`from P import m` names module P.m)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module: the module
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None; depth-first with colours, deterministic order."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    root = Path(ettin_cli.__file__).parent
    modules = module_files(root)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    # A package's `__init__` is imported on the way to each of its modules, not the other way: drop the edges
    # from a module to its own enclosing packages, which would otherwise close a loop through every `__init__`.
    return {name: {t for t in deps if not name.startswith(t + ".")} for name, deps in graph.items()}


def test_finding_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_and_from_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ettin_cli.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ettin_cli.sub.a import f\nimport ettin_cli.top\n")
    (pkg / "top.py").write_text("from . import sub\nfrom .sub import a\n")
    modules = module_files(pkg)
    assert imported_modules("ettin_cli.sub.a", modules["ettin_cli.sub.a"], modules) == {"ettin_cli.sub.b"}
    assert imported_modules("ettin_cli.sub.b", modules["ettin_cli.sub.b"], modules) == {"ettin_cli.sub.a",
                                                                                        "ettin_cli.top"}
    assert imported_modules("ettin_cli.top", modules["ettin_cli.top"], modules) == {"ettin_cli.sub",
                                                                                    "ettin_cli.sub.a"}


def test_no_import_cycle_in_src():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    """A module imports only from its own package or those to its left (top-level `cli`, `__main__` are above all)."""
    def layer(module: str) -> int | None:
        parts = module.split(".")
        return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None

    upward = [f"{name} -> {dep}" for name, deps in sorted(import_graph().items()) for dep in sorted(deps)
              if layer(name) is not None and layer(dep) is not None and layer(dep) > layer(name)]
    assert upward == [], "imports against the layering: " + "; ".join(upward)


def function_level_imports(path: Path) -> list[str]:
    """`file:line` of every import of this package made inside a function body."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                own = (isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith(PACKAGE))
                       or isinstance(inner, ast.Import) and any(a.name.startswith(PACKAGE) for a in inner.names))
                if own:
                    found.append(f"{path.name}:{inner.lineno}")
    return found


def test_function_level_imports_are_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\nfrom ettin_cli.core import files\n\ndef f():\n    import json\n"
                    "    from ettin_cli.io import shards\n\ndef g():\n    from . import x\n")
    assert function_level_imports(path) == ["m.py:6", "m.py:9"]


def test_sibling_imports_sit_at_module_top():
    """Lazy imports are for heavy libraries (torch, transformers, datasets, ...); a module of this package is
    imported where the module starts, so the import graph reads from the top of each file (issue #22).

    The one exception is `commands/`: `ettin --help` imports every command module, so a command imports the
    library module that does its work when it runs. Measured: with those hoisted too, `ettin --help` imports
    every module of the package and numpy and takes 0.9 s instead of 0.45 s on 2 cores."""
    root = Path(ettin_cli.__file__).parent
    lazy = [hit for path in sorted(root.rglob("*.py")) if "commands" not in path.relative_to(root).parts
            for hit in function_level_imports(path)]
    assert lazy == [], "imports of ettin_cli inside functions: " + ", ".join(lazy)
