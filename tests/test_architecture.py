"""Architecture rules, checked by reading the source with `ast` (nothing is imported):

- imports inside `clip_robust_ext` run one way: no import cycle between its modules (imports
  inside functions count too; `if TYPE_CHECKING:` blocks do not);
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
    for node in _walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and _private(node.attr)
        ):
            mod.private_attrs.append((module_aliases[node.value.id], node.attr, node.lineno))
    return mod


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
    """Layers, not just modules: e.g. models must not import attacks while attacks imports
    models (the package itself, which re-exports the API, is left out)."""
    found = cycles(package_graph(import_graph(core_modules())))
    assert not found, "import cycles between sub-packages:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """clip_robust_ext.<first part> -> the ones it imports."""

    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if top(module) == CORE:
            continue
        edges = out.setdefault(top(module), set())
        edges |= {top(d) for d in deps if top(d) not in (CORE, top(module))}
    for deps in list(out.values()):
        for dep in deps:
            out.setdefault(dep, set())
    return out


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
    print(f"import cycles (strongly connected groups): {len(found_cycles)}")
    package_cycles = cycles(package_graph(import_graph(core)))
    print(f"sub-package cycles: {len(package_cycles)} {package_cycles}")
    for c in found_cycles:
        print("  " + " <-> ".join(c))
    print(f"private cross-module imports: {len(private)}")
    for p in private:
        print("  " + p)
    print(f"plugin imports outside the API: {len(outside)}")
    for p in outside:
        print("  " + p)
