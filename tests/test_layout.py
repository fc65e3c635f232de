"""The code's layering, read from the source with `ast` (nothing is imported): no import cycles between
the modules of proxy/ and adapters/, adapters never reach into proxy, no module past 550 lines, and no
lowercase module-level mutable containers (state shared by every app in the process)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "adapters")
MAX_LINES = 550
MUTABLE_CALLS = {"dict", "list", "set", "bytearray", "defaultdict", "OrderedDict", "deque", "Counter", "ChainMap",
                 "WeakValueDictionary", "WeakKeyDictionary", "WeakSet"}
CONSTANT_NAME = re.compile(r"_*[A-Z][A-Z0-9_]*")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: int
    imports: dict[str, int] = field(default_factory=dict)  # imported module -> first line importing it


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, in functions too, but not in an ``if TYPE_CHECKING:`` body
    (its ``else:`` runs, so it counts)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                found.extend(_runtime_imports(ast.Module(body=[stmt], type_ignores=[])))
        else:
            found.extend(_runtime_imports(child))
    return found


def load_modules() -> dict[str, Module]:
    return build({path: path.read_text(encoding="utf-8") for package in PACKAGES
                  for path in sorted((ROOT / package).rglob("*.py"))})


def build(sources: dict[Path, str]) -> dict[str, Module]:
    """Modules (with their imports of each other) from source texts keyed by their path under ROOT."""
    modules = {_module_name(path): Module(_module_name(path), path, ast.parse(text, str(path)), len(text.splitlines()))
               for path, text in sources.items()}
    for module in modules.values():
        is_package = module.path.name == "__init__.py"
        for stmt in _runtime_imports(module.tree):
            for target in _targets(stmt, module.name, is_package, modules):
                module.imports.setdefault(target, stmt.lineno)
    return modules


def _targets(stmt: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
             modules: dict[str, Module]) -> list[str]:
    """The modules of ours an import statement loads: ``from a import b`` is module a.b when that is one
    (else a); a dotted name not among ours resolves to its longest prefix that is."""
    if isinstance(stmt, ast.Import):
        names = [alias.name for alias in stmt.names]
    else:
        base = stmt.module or ""
        if stmt.level:
            parts = importer.split(".")
            anchor = parts if is_package else parts[:-1]
            anchor = anchor[:len(anchor) - (stmt.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in stmt.names]
    found = []
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts and ".".join(parts) != importer:
            found.append(".".join(parts))
    return found


def find_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """One cycle (as a path of modules, first == last) per strongly connected component of the import graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in modules[v].imports:
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            connect(name)
    return [_cycle_through(component, modules) for component in components]


def _cycle_through(component: list[str], modules: dict[str, Module]) -> list[str]:
    """A shortest import path from the component's first module back to itself, inside the component."""
    start, inside = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(modules[v].imports):
            if w == start:
                return [*paths[v], start]
            if w in inside and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component  # unreachable: a strongly connected component has a cycle through every member


def _describe(cycle: list[str], modules: dict[str, Module]) -> str:
    steps = [f"{a} (line {modules[a].imports[b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*steps, cycle[-1]])


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import: the module body and what its if/try/with blocks hold."""
    found: list[ast.stmt] = []
    for stmt in body:
        found.append(stmt)
        if isinstance(stmt, ast.If) and not _is_type_checking(stmt.test):
            found.extend(_module_level(stmt.body + stmt.orelse))
        elif isinstance(stmt, ast.Try):
            found.extend(_module_level(stmt.body + stmt.orelse + stmt.finalbody
                                       + [s for h in stmt.handlers for s in h.body]))
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            found.extend(_module_level(stmt.body))
    return found


def _is_mutable(value: ast.expr | None) -> bool:
    if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return called in MUTABLE_CALLS
    return False


def _bindings(target: ast.expr, value: ast.expr | None) -> list[tuple[str, ast.expr | None]]:
    """(name, value) for each module global an assignment binds; ``a, b = [], 1`` pairs a with []."""
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    if isinstance(target, (ast.Tuple, ast.List)):
        values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) \
            else [None] * len(target.elts)
        return [pair for t, v in zip(target.elts, values, strict=True) for pair in _bindings(t, v)]
    return []  # an attribute or subscript: mutating something else, not binding a module global


def mutable_globals(module: Module) -> list[str]:
    found = []
    for stmt in _module_level(module.tree.body):
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            targets, value = [stmt.target], stmt.value
        else:
            continue
        for name, bound in (pair for t in targets for pair in _bindings(t, value)):
            if _is_mutable(bound) and not CONSTANT_NAME.fullmatch(name) and not name.startswith("__"):
                assert bound is not None
                found.append(f"{module.path.relative_to(ROOT)}:{stmt.lineno}: {name} = {ast.unparse(bound)[:60]}")
    return found


MODULES = load_modules()


def test_the_import_graph_is_read():
    """A guard for the guards below: the graph holds the modules and the edges we know are there."""
    assert {"proxy.app", "proxy.config", "adapters.base", "adapters.openai"} <= set(MODULES)
    assert "proxy.config" in MODULES["proxy.app"].imports


def test_the_checks_see_what_they_look_for():
    """The checks on a made-up package: a cycle through a function-level import and a relative one, a
    TYPE_CHECKING import that is no edge, and which module-level assignments count as mutable state."""
    made_up = build({
        ROOT / "proxy/__init__.py": "",
        ROOT / "proxy/a.py": "from proxy import b\nCACHE = {}\n__all__ = ['x']\n",
        ROOT / "proxy/b.py": "def f():\n    from .c import g\nseen: dict = {}\nx, y = [], 1\n",
        ROOT / "proxy/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import proxy.d\n"
                             "import proxy.a as alias\nhits = collections.defaultdict(int)\nN = (1, 2)\n",
        ROOT / "proxy/d.py": "import proxy.c\n",
    })
    assert find_cycles(made_up) == [["proxy.a", "proxy.b", "proxy.c", "proxy.a"]]
    assert _describe(find_cycles(made_up)[0], made_up) == (
        "proxy.a (line 1) -> proxy.b (line 2) -> proxy.c (line 4) -> proxy.a")
    assert [line.split(": ", 1)[1] for m in made_up.values() for line in mutable_globals(m)] == [
        "seen = {}", "x = []", "hits = collections.defaultdict(int)"]


def test_no_import_cycles():
    cycles = find_cycles(MODULES)
    assert not cycles, "import cycles (module (line of its import) -> ...):\n" + "\n".join(
        _describe(c, MODULES) for c in cycles)


def test_adapters_import_nothing_from_proxy():
    wrong = [f"{m.path.relative_to(ROOT)}:{line}: imports {target}"
             for m in MODULES.values() if m.name.startswith("adapters")
             for target, line in m.imports.items() if target.split(".")[0] == "proxy"]
    assert not wrong, "adapters must not depend on proxy:\n" + "\n".join(wrong)


def test_no_module_is_over_550_lines():
    long = [f"{m.path.relative_to(ROOT)}: {m.lines} lines" for m in MODULES.values() if m.lines > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(sorted(long))


def test_no_lowercase_module_level_mutable_containers():
    """Module-level state is shared by every app (and every test) in the process: keep it on the app or
    runtime. UPPER_CASE names are constants by convention and may hold a dict or list."""
    found = [line for m in MODULES.values() for line in mutable_globals(m)]
    assert not found, "module-level mutable containers:\n" + "\n".join(sorted(found))
