"""The architecture rules of docs/architecture.md, checked on the source tree (AST only, nothing imported).

* **Stage order**: a module imports only modules of its own stage or of earlier ones, in the order
  base → render → data → simulate → models → train → predict → fit → evaluate → cli.
* **No import cycles** between modules; imports inside functions count like module-level ones.
* **No private names across subpackages**: ``from galnet.x.y import _name`` (or ``module._name``) only within
  the subpackage that defines it (a base module's private names stay in that module).
* **No function over 100 lines** (``end_lineno - lineno + 1``, decorators excluded).

Run ``python tests/test_architecture.py`` for the full report (the stage graph, cycles, violations and the
longest functions).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "galnet"

#: Stages in dependency order; a module may import modules of its own stage or of an earlier one.
STAGES = ("base", "render", "data", "simulate", "models", "train", "predict", "fit", "evaluate", "cli")
#: Top-level modules that are the ``cli`` stage; every other top-level module is ``base``.
CLI_MODULES = ("cli", "__main__")
MAX_FUNCTION_LINES = 100


@dataclass
class Import:
    """One imported module (``target``) and the names taken from it, at ``line`` of ``source``."""

    source: str
    target: str
    line: int
    names: list[str] = field(default_factory=list)


def module_files(src: Path = SRC) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def stage(module: str) -> str:
    """The stage of a module: its subpackage, ``cli`` for the command line, else ``base``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if parts[1] in CLI_MODULES:
        return "cli"
    return parts[1] if parts[1] in STAGES else "base"


def unit(module: str) -> str:
    """The unit inside which private names may be shared: a subpackage, or a single top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: dict[str, Path]) -> list[Import]:
    """Every import of a package module by a package module (module level, in functions, anywhere)."""
    found = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        name = alias.name
                        while name not in modules:
                            name = name.rsplit(".", 1)[0]
                        found.append(Import(module, name, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                if target.split(".")[0] != PACKAGE:
                    continue
                names = []
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:  # `from . import h5`: the submodule itself
                        found.append(Import(module, sub, node.lineno))
                    else:
                        names.append(alias.name)
                if names:
                    found.append(Import(module, target, node.lineno, names))
    return found


def private_uses(modules: dict[str, Path]) -> list[str]:
    """``module:line: name`` of each private name taken from another unit (import or attribute access)."""
    bad = []
    for imp in imports(modules):
        if unit(imp.source) == unit(imp.target):
            continue
        bad += [f"{imp.source}:{imp.line}: imports {n} from {imp.target}" for n in imp.names
                if n.startswith("_") and not n.startswith("__")]
        if imp.target.split(".")[-1].startswith("_") and not imp.target.endswith("__main__"):
            bad.append(f"{imp.source}:{imp.line}: imports the private module {imp.target}")
    for module, path in modules.items():  # `from ..render import sersic` ... `sersic._k_grids`
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and unit(aliases[node.value.id]) != unit(module)):
                bad.append(f"{module}:{node.lineno}: uses {aliases[node.value.id]}.{node.attr}")
    return bad


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names a module defines (functions, classes, assignments) and names it imports, at its top level."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in tree.body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(sub.name)
                if sub is node:
                    break
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                defined.add(sub.id)
            elif isinstance(sub, ast.Import | ast.ImportFrom):
                imported.update(a.asname or a.name.split(".")[0] for a in sub.names)
    return defined, imported


def reexported_imports(modules: dict[str, Path]) -> list[str]:
    """``module:line: ...`` of each name imported from a plain module that only imports it from elsewhere.

    A name is imported from the module that defines it, or from a package ``__init__`` (the public face of a
    subpackage), never through a third module that happens to import it.
    """
    names = {m: _top_level_names(ast.parse(p.read_text(), str(p))) for m, p in modules.items()}
    bad = []
    for imp in imports(modules):
        if modules[imp.target].name == "__init__.py":
            continue
        defined, imported = names[imp.target]
        bad += [f"{imp.source}:{imp.line}: imports {n} from {imp.target}, which imports it from elsewhere"
                for n in imp.names if n in imported and n not in defined]
    return bad


def backward_imports(modules: dict[str, Path]) -> list[str]:
    """``module:line: ...`` of each import of a later stage."""
    bad = []
    for imp in imports(modules):
        a, b = stage(imp.source), stage(imp.target)
        if STAGES.index(b) > STAGES.index(a):
            bad.append(f"{imp.source}:{imp.line}: stage {a} imports {imp.target} (stage {b})")
    return bad


def cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The import cycles: each strongly connected component of more than one module (or a self-import)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports(modules):
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:  # Tarjan's algorithm
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def function_lengths(modules: dict[str, Path]) -> list[tuple[int, str]]:
    """``(lines, "module:line qualified.name")`` of every function and method, longest first."""
    out = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))

        todo: list[tuple[ast.AST, str]] = [(tree, "")]
        while todo:
            node, prefix = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{prefix}{child.name}"
                    out.append((child.end_lineno - child.lineno + 1, f"{module}:{child.lineno} {name}"))
                    todo.append((child, name + "."))
                elif isinstance(child, ast.ClassDef):
                    todo.append((child, f"{prefix}{child.name}."))
                else:
                    todo.append((child, prefix))
    return sorted(out, reverse=True)


# ============================================================================ tests
def test_stage_of_modules():
    assert stage("galnet.params") == "base" and stage("galnet.io") == "base"
    assert stage("galnet.data.shards") == "data" and stage("galnet.cli") == "cli"
    assert stage("galnet.__main__") == "cli" and stage("galnet") == "base"


def test_no_private_name_from_another_subpackage():
    assert private_uses(module_files()) == []


def test_no_import_cycle():
    assert cycles(module_files()) == []


def test_names_come_from_where_they_are_defined():
    assert reexported_imports(module_files()) == []


def test_no_stage_imports_a_later_one():
    assert backward_imports(module_files()) == []


def test_no_function_over_100_lines():
    long = [f"{name}: {n} lines" for n, name in function_lengths(module_files()) if n > MAX_FUNCTION_LINES]
    assert long == []


def test_the_checks_catch_violations(tmp_path):
    """Each rule fails on a tree that breaks it."""
    pkg = tmp_path / PACKAGE
    for d in ("", "render", "fit"):
        (pkg / d).mkdir(exist_ok=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "params.py").write_text("_TABLE = 1\n")
    (pkg / "render" / "a.py").write_text("def f():\n    from ..fit import b\n")
    (pkg / "fit" / "b.py").write_text("from ..render import a\nfrom ..params import _TABLE\nx = a._g\n")
    (pkg / "fit" / "c.py").write_text("from .b import a\n\n\ndef g():\n" + "    pass\n" * MAX_FUNCTION_LINES)
    modules = module_files(tmp_path)
    assert backward_imports(modules) == ["galnet.render.a:2: stage render imports galnet.fit.b (stage fit)"]
    assert cycles(modules) == [["galnet.fit.b", "galnet.render.a"]]
    assert private_uses(modules) == ["galnet.fit.b:2: imports _TABLE from galnet.params",
                                     "galnet.fit.b:3: uses galnet.render.a._g"]
    assert function_lengths(modules)[0] == (MAX_FUNCTION_LINES + 1, "galnet.fit.c:4 g")
    assert reexported_imports(modules) == [
        "galnet.fit.c:1: imports a from galnet.fit.b, which imports it from elsewhere"]


def main() -> int:
    modules = module_files()
    found = {"private names across subpackages": private_uses(modules),
             "import cycles": [" <-> ".join(c) for c in cycles(modules)],
             "imports of a later stage": backward_imports(modules),
             "names imported through a module that does not define them": reexported_imports(modules)}
    edges: dict[tuple[str, str], int] = {}
    for imp in imports(modules):
        a, b = stage(imp.source), stage(imp.target)
        if a != b:
            edges[a, b] = edges.get((a, b), 0) + 1
    print(f"{len(modules)} modules; stage order: {' -> '.join(STAGES)}")
    for a in STAGES:
        uses = [b for b in STAGES if (a, b) in edges]
        print(f"  {a:9s} imports {', '.join(uses) or '-'}")
    for what, items in found.items():
        print(f"{what}: {len(items)}")
        for item in items:
            print(f"  {item}")
    lengths = function_lengths(modules)
    print(f"functions over {MAX_FUNCTION_LINES} lines: {sum(n > MAX_FUNCTION_LINES for n, _ in lengths)}; "
          "longest:")
    for n, name in lengths[:10]:
        print(f"  {n:4d}  {name}")
    return 1 if any(found.values()) or lengths[0][0] > MAX_FUNCTION_LINES else 0


if __name__ == "__main__":
    sys.exit(main())
