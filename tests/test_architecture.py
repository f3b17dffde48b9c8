"""Architecture rules, checked by reading the source with `ast` (nothing is imported):

- imports inside `clip_robust_ext` run one way: no import cycle between its modules, and every
  import goes down the floors of docs (ARCHITECTURE.md, "Layers"; FLOORS below), never up.
  Imports inside functions count, and so do lazy ones: every table given to `lazy_exports`
  (the plugin API's included) and every `importlib.import_module("literal")` is an edge.
  `if TYPE_CHECKING:` blocks are not;
- no function in the core or the built-in plugins is longer than 100 lines;
- no private name (`_x`) is imported from, or read off, another module;
- built-in plugins (plugins/clipx_*) and the example plugin import the core only through the
  declared plugin API, `clip_robust_ext.api` (or the package itself, which re-exports it).

Run as a script (`python tests/test_architecture.py`) to print the counts and every offence.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = "clip_robust_ext"
PUBLIC_API = {CORE, f"{CORE}.api"}
MAX_FUNCTION_LINES = 100

# room (a module or package, matched by the longest prefix) -> floor, from the ground up
FLOORS = {
    "errors": 1,
    "hookspecs": 1,
    "utils": 2,
    "data": 2,
    "plugin_manager": 2,
    "models": 3,
    "params": 3,
    "registry": 4,
    "cachekeys": 4,  # result-store keys: registry provenance and plugin versions
    "attacks": 5,
    "evaluation": 6,
    "training": 6,
    "run.layout": 7,
    "run.lock": 7,
    "run.builders": 7,
    "run.records": 7,
    "recipes": 8,
    "api": 8,  # the plugin API: floors 1-8 only
    "": 8,  # the package itself re-exports the API
    "run": 9,  # run/__init__ (imports nothing); the stages and the single-model evaluation path
    "run.stages": 9,
    "run.evaluate": 9,
    "analysis": 10,
    "export": 10,
    "scaffold": 10,  # `clipx plugin new`: writes a plugin skeleton from its template
    "cli": 11,
    "datacli": 11,
    "comparecli": 11,  # `clipx compare` / `clipx samples` (the compare helper's CLI module)
    "__main__": 11,
}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: list[tuple[str, str | None, int]] = field(default_factory=list)  # (module, name, line)
    private_attrs: list[tuple[str, str, int]] = field(default_factory=list)  # (module, attr, line)


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _absolute(mod: Module, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST):
    """ast.walk, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def parse(path: Path, root: Path) -> Module:
    name, is_package = _module_name(path, root)
    mod = Module(name, path, is_package)
    tree = ast.parse(path.read_text(), str(path))
    module_aliases: dict[str, str] = {}
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                mod.imports.append((alias.name, None, node.lineno))
                module_aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(mod, node.level, node.module)
            for alias in node.names:
                mod.imports.append((target, alias.name, node.lineno))
                # `from . import registry` binds a module: reading registry._x is private access
                module_aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Call):
            for target in _lazy_targets(mod, node, tree):
                mod.imports.append((target, None, node.lineno))
    for node in _walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and _private(node.attr)
        ):
            mod.private_attrs.append((module_aliases[node.value.id], node.attr, node.lineno))
    return mod


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _module_constant(tree: ast.AST, name: str) -> ast.AST | None:
    """The value a module-level `name = ...` assigns (a lazy table passed by name)."""
    for node in getattr(tree, "body", []):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value
    return None


def _relative(mod: Module, dotted: str) -> str:
    """A module string as importlib reads it relative to `mod`'s package (".x", "..y.z")."""
    level = len(dotted) - len(dotted.lstrip("."))
    return _absolute(mod, level, dotted[level:] or None) if level else dotted


def _lazy_targets(mod: Module, node: ast.Call, tree: ast.AST) -> list[str]:
    """Modules a call loads by name: `lazy_exports(name, table)` (every ".x" string of the table)
    and `importlib.import_module("literal", ...)`."""
    name = _call_name(node)
    if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return [_relative(mod, value)] if isinstance(value, str) else []
    if name != "lazy_exports" or len(node.args) < 2:
        return []
    table = node.args[1]
    if isinstance(table, ast.Name):
        table = _module_constant(tree, table.id) or table
    strings = [n.value for n in ast.walk(table) if isinstance(n, ast.Constant)]
    return [_relative(mod, v) for v in strings if isinstance(v, str) and v.startswith(".")]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def collect(root: Path, packages: list[str]) -> dict[str, Module]:
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            mod = parse(path, root)
            out[mod.name] = mod
    return out


def _resolve(modules: dict[str, Module], target: str, name: str | None) -> str | None:
    """The known module an import statement loads: `from a import b` is a.b if that is a module."""
    if name is not None and f"{target}.{name}" in modules:
        return f"{target}.{name}"
    return target if target in modules else None


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for mod in modules.values():
        for target, name, _ in mod.imports:
            dep = _resolve(modules, target, name)
            if dep is not None and dep != mod.name:
                graph[mod.name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10000)
    try:  # restored: other tests rely on the default limit (deeply nested TOML is an error)
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def _top(name: str) -> str:
    return name.split(".")[0]


def private_imports(modules: dict[str, Module]) -> list[str]:
    """`from x import _y` and `x._y` where x is another module of ours (or the core)."""
    ours = {_top(m) for m in modules} | {CORE}
    out = []
    for mod in modules.values():
        found = [(t, n, line) for t, n, line in mod.imports if n is not None and _private(n)]
        found += mod.private_attrs
        for target, name, line in found:
            if _top(target) not in ours or target == mod.name:
                continue
            out.append(f"{mod.path.relative_to(REPO)}:{line}: {target}.{name}")
    return sorted(set(out))


def plugin_imports_outside_api(modules: dict[str, Module]) -> list[str]:
    """Imports of the core other than `clip_robust_ext.api` or a top-level name of the package."""
    out = []
    for mod in modules.values():
        if _top(mod.name) == CORE:
            continue
        for target, name, line in mod.imports:
            if _top(target) != CORE:
                continue
            allowed = target == f"{CORE}.api" or (
                target == CORE and (name is None or name == "api" or not _is_submodule(name))
            )
            if not allowed:
                where = f"{target}.{name}" if name else target
                out.append(f"{mod.path.relative_to(REPO)}:{line}: {where}")
    return sorted(set(out))


def _is_submodule(name: str) -> bool:
    return (REPO / CORE / name).is_dir() or (REPO / CORE / f"{name}.py").is_file()


def core_modules() -> dict[str, Module]:
    return collect(REPO, [CORE])


def plugin_modules() -> dict[str, Module]:
    plugins = collect(REPO / "plugins", [p.name for p in (REPO / "plugins").glob("clipx_*")])
    example_root = REPO / "examples" / "clipx-example-plugin"
    plugins.update(collect(example_root, ["clipx_example_plugin"]))
    return plugins


def test_core_imports_have_no_cycle():
    found = cycles(import_graph(core_modules()))
    assert not found, "import cycles in clip_robust_ext:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_subpackages_import_one_way():
    """Rooms, not just modules: e.g. models must not import attacks while attacks imports
    models (the package itself, which re-exports the API, is left out)."""
    found = cycles(package_graph(import_graph(core_modules())))
    assert not found, "import cycles between rooms:\n" + "\n".join(" <-> ".join(c) for c in found)


def room_of(module: str, floors: dict[str, int] = FLOORS, package: str = CORE) -> str | None:
    """The FLOORS key that holds `module` (the longest matching prefix), or None."""
    rest = module[len(package) + 1 :] if module != package else ""
    parts = rest.split(".") if rest else []
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in floors and (key or not parts):
            return key
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Room -> the rooms it imports (the package itself, which re-exports the API, left out)."""
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        room = room_of(module)
        if room in (None, ""):
            continue
        edges = out.setdefault(room, set())
        edges |= {r for r in map(room_of, deps) if r not in (None, "", room)}
    for deps in list(out.values()):
        for dep in deps:
            out.setdefault(dep, set())
    return out


def upward_imports(
    graph: dict[str, set[str]], floors: dict[str, int] = FLOORS, package: str = CORE
) -> list[str]:
    """Every edge that runs up the floors, and every module no floor holds."""
    out = []
    for module, deps in sorted(graph.items()):
        room = room_of(module, floors, package)
        if room is None:
            out.append(f"{module}: on no floor (add it to FLOORS)")
            continue
        for dep in sorted(deps):
            target = room_of(dep, floors, package)
            if target is not None and floors[target] > floors[room]:
                out.append(f"{module} (floor {floors[room]}) -> {dep} (floor {floors[target]})")
    return out


def test_imports_run_down_the_floors():
    """Nothing runs back up, lazy and function-level imports included; the plugin API (and the
    package that re-exports it) stays below the run stages, the analysis and the CLI."""
    graph = import_graph(core_modules())
    found = upward_imports(graph)
    assert not found, "imports running up the floors:\n" + "\n".join(found)
    api_targets = {room_of(d) for d in graph[f"{CORE}.api"]}
    assert api_targets and all(FLOORS[r] <= FLOORS["api"] for r in api_targets), api_targets
    assert f"{CORE}.models" in graph[f"{CORE}.api"]  # the lazy table is read


def long_functions(
    paths: list[Path], limit: int = MAX_FUNCTION_LINES, root: Path = REPO
) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno}: {node.name} ({lines})")
    return out


def test_no_function_over_100_lines():
    paths = sorted((REPO / CORE).rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py"))
    found = long_functions(paths)
    assert not found, "functions over 100 lines:\n" + "\n".join(found)


def test_no_private_name_crosses_a_module():
    modules = {**core_modules(), **plugin_modules()}
    found = private_imports(modules)
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_plugins_import_only_the_declared_api():
    found = plugin_imports_outside_api(plugin_modules())
    assert not found, (
        "plugins must import from clip_robust_ext.api (or clip_robust_ext) only:\n"
        + "\n".join(found)
    )


def test_example_attack_plugin_is_short():
    path = REPO / "examples" / "clipx-example-plugin" / "clipx_example_plugin" / "attack.py"
    assert path.is_file()
    assert len(path.read_text().splitlines()) <= 30


def test_the_api_is_re_exported_and_documented_old_paths_still_work():
    """Plugins written against the paths docs/PLUGINS.md used to show keep working, and get the
    same objects as the declared API."""
    import clip_robust_ext
    from clip_robust_ext import api
    from clip_robust_ext.attacks.torchattacks_adapter import factory_for
    from clip_robust_ext.evaluation import Protocol
    from clip_robust_ext.training import Batch, Defense, TrainContext
    from clip_robust_ext.utils.eps import format_eps, parse_eps

    assert api.factory_for is factory_for and api.Protocol is Protocol
    assert (api.Defense, api.Batch, api.TrainContext) == (Defense, Batch, TrainContext)
    assert (api.parse_eps, api.format_eps) == (parse_eps, format_eps)
    for name in api.__all__:
        assert getattr(clip_robust_ext, name) is getattr(api, name), name


def test_checker_sees_a_cycle_and_a_private_import(tmp_path):
    """The checker itself: a two-module cycle via a function-level import and a private import."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _hidden\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a._x\n_hidden = 1\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
    )
    modules = collect(tmp_path, ["pkg"])
    assert cycles(import_graph(modules)) == [["pkg.a", "pkg.b"]]
    assert "pkg.c" not in import_graph(modules)["pkg.a"]
    assert not import_graph(modules)["pkg.c"]  # TYPE_CHECKING imports are not runtime edges
    names = {p.rsplit(": ", 1)[-1] for p in _private_in(modules, tmp_path)}
    assert names == {"pkg.b._hidden", "pkg.a._x"}


def test_checker_sees_an_upward_lazy_import(tmp_path):
    """A planted upward import through a lazy table, through importlib and inside a function is
    each caught; the same imports running down are not."""
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "high.py").write_text("from .low import Thing\n")
    (pkg / "low" / "__init__.py").write_text(
        "from ..utils_lazy import lazy_exports\n"
        "_TABLE = {'Thing': '..high'}\n"
        "__getattr__ = lazy_exports(__name__, _TABLE)\n"
    )
    (pkg / "low" / "helper.py").write_text(
        "import importlib\n\ndef f():\n    return importlib.import_module('pkg.top')\n"
    )
    (pkg / "low" / "inner.py").write_text("def g():\n    from .. import top\n")
    (pkg / "top.py").write_text("")
    (pkg / "utils_lazy.py").write_text("")
    floors = {"": 0, "utils_lazy": 0, "low": 1, "high": 2, "top": 3}
    graph = import_graph(collect(tmp_path, ["pkg"]))
    found = upward_imports(graph, floors, "pkg")
    assert found == [
        "pkg.low (floor 1) -> pkg.high (floor 2)",
        "pkg.low.helper (floor 1) -> pkg.top (floor 3)",
        "pkg.low.inner (floor 1) -> pkg.top (floor 3)",
    ]
    assert cycles(graph) == [["pkg.high", "pkg.low"]]  # the lazy edge closes a cycle too
    assert upward_imports(graph, {**floors, "low": 3, "high": 3}, "pkg") == []


def test_checker_sees_a_long_function(tmp_path):
    """100 lines pass; 101 fail, named with the line they start on."""
    path = tmp_path / "probe.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(99))
    path.write_text(f"def short():\n{body}\n\ndef long():\n{body}    return 1\n")
    assert long_functions([path], root=tmp_path) == ["probe.py:103: long (101)"]


def _private_in(modules: dict[str, Module], root: Path) -> list[str]:
    out = []
    for mod in modules.values():
        found = [(t, n, line) for t, n, line in mod.imports if n is not None and _private(n)]
        for target, name, line in found + mod.private_attrs:
            if _top(target) == _top(mod.name) and target != mod.name:
                out.append(f"{mod.name}:{line}: {target}.{name}")
    return out


if __name__ == "__main__":
    core = core_modules()
    found_cycles = cycles(import_graph(core))
    private = private_imports({**core, **plugin_modules()})
    outside = plugin_imports_outside_api(plugin_modules())
    graph = import_graph(core)
    edges = sum(len(v) for v in graph.values())
    print(
        f"modules: {len(graph)}, internal import edges (lazy and function-level included): {edges}"
    )
    print(f"import cycles (strongly connected groups): {len(found_cycles)}")
    package_cycles = cycles(package_graph(graph))
    print(f"room cycles: {len(package_cycles)} {package_cycles}")
    upward = upward_imports(graph)
    print(f"imports running up the floors: {len(upward)}")
    for u in upward:
        print("  " + u)
    paths = sorted((REPO / CORE).rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py"))
    long = long_functions(paths)
    print(f"functions over {MAX_FUNCTION_LINES} lines: {len(long)}")
    for f in long:
        print("  " + f)
    for c in found_cycles:
        print("  " + " <-> ".join(c))
    print(f"private cross-module imports: {len(private)}")
    for p in private:
        print("  " + p)
    print(f"plugin imports outside the API: {len(outside)}")
    for p in outside:
        print("  " + p)
