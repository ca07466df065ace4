"""The package's layering: every module imports on its own, the modules import each other
without cycles, and no module reaches into another's private names.

The graph is built from the source text, so it sees every ``import`` statement, including
those inside functions: a lazy import only hides a cycle until someone moves it to the top
of the file. Importing a module always imports its parent packages first; that is not an
edge here (a package's ``__init__`` importing its submodules would otherwise always look
like a cycle with them). Dynamic imports (``importlib.import_module(f"...")``) are not seen.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tokenmixers"


def _module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package under ``src``.
    Read afresh by each test: files may come and go while the package is being reworked."""
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific module of the package that ``name`` (a dotted name) lies in."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imports(module: str, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(target module, imported name or "", line)`` for each import in ``module``'s file
    that lands in the package; ``from pkg import name`` targets ``pkg.name`` when that is a
    module, else ``pkg``."""
    path = modules[module]
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, modules)
                if target is not None:
                    out.append((target, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this module's own package
                base_parts = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else _known(base, modules)
                if target is not None:
                    name = "" if target == submodule else alias.name
                    out.append((target, name, node.lineno))
    return out


def _graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module in modules:
        for target, _, line in _imports(module, modules):
            if target != module:
                graph[module].setdefault(target, line)
    return graph


def _groups(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (each module of a group
    imports, through the others, every other one)."""
    # Tarjan's algorithm, iteratively (no recursion limit to think about).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected group of modules."""
    cycles = []
    for group in _groups(graph):
        # Shortest way from the group's first module back to itself, inside the group.
        members = set(group)
        start = group[0]
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for node in frontier:
                for child in sorted(graph[node]):
                    if child in members and child not in previous:
                        previous[child] = node
                        following.append(child)
            frontier = following
        path = [start]
        node = previous[start]
        while node != start:
            path.append(node)
            node = previous[node]
        path.append(start)
        cycles.append(path[::-1])
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in itertools.pairwise(cycle)]
    return "\n    ".join(steps)


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    # One interpreter for all modules (a fresh one each would cost a torch import per
    # module); the order-dependent failures a cycle causes are the graph test's job.
    script = f"""
import importlib, json, pkgutil, sys, traceback
sys.path.insert(0, {str(SRC)!r})  # this source tree, whatever else is installed
import {PACKAGE}

failed = {{}}
names = [info.name for info in pkgutil.walk_packages(
    {PACKAGE}.__path__, "{PACKAGE}.",
    onerror=lambda name: failed.setdefault(name, traceback.format_exc()))]
for name in names:
    try:
        if name == "{PACKAGE}.__main__":
            # Running the CLI is what importing __main__ does: ask it for its version.
            sys.argv = ["{PACKAGE}", "--version"]
            try:
                importlib.import_module(name)
            except SystemExit as done:
                if done.code not in (0, None):
                    raise
        else:
            importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc()
print(json.dumps({{"imported": names, "failed": failed}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=SRC.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    failed = result["failed"]
    assert not failed, "\n\n".join(f"{name}:\n{tb}" for name, tb in failed.items())
    # walk_packages found them all (a module it skipped would go untested).
    assert set(result["imported"]) == set(_module_files()) - {PACKAGE}


def test_the_graph_on_a_made_up_package(tmp_path: Path) -> None:
    # The resolver and the cycle finder on known shapes, so that "no cycle" means something.
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "from . import b\n\ndef f():\n    from .sub import c\n",  # a lazy import
        "b.py": "import tokenmixers.sub.c as c\nimport torch\n",
        "sub/__init__.py": "from .c import _private, public\n",
        "sub/c.py": "from ..a import f\nfrom tokenmixers import sub\n_private = public = 1\n",
    }
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    modules = _module_files(tmp_path)
    graph = {m.removeprefix(f"{PACKAGE}."): {t.removeprefix(f"{PACKAGE}."): line
                                             for t, line in targets.items()}
             for m, targets in _graph(modules).items()}
    # Parent packages are no edges (sub.c imports a, not tokenmixers); `from tokenmixers
    # import sub` is the subpackage itself.
    assert graph == {PACKAGE: {"a": 1}, "a": {"b": 1, "sub.c": 4}, "b": {"sub.c": 1},
                     "sub": {"sub.c": 1}, "sub.c": {"a": 1, "sub": 2}}
    # One group (b and sub are in it through sub.c), shown by its shortest cycle.
    assert _groups(graph) == [["a", "b", "sub", "sub.c"]]
    assert _cycles(graph) == [["a", "sub.c", "a"]]
    assert ("tokenmixers.sub.c", "_private", 1) in _imports(f"{PACKAGE}.sub", modules)
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) == []


def test_the_graph_sees_this_package_as_written() -> None:
    modules = _module_files()
    cli = {t for t, _, _ in _imports(f"{PACKAGE}.cli", modules)}
    assert f"{PACKAGE}.zoo" in cli  # inside a function
    loop = {t for t, _, _ in _imports(f"{PACKAGE}.train.loop", modules)}
    # `from tokenmixers.train import distributed as D` is the module, not the package
    assert f"{PACKAGE}.train.distributed" in loop and f"{PACKAGE}.train" not in loop


def test_no_import_cycles() -> None:
    graph = _graph(_module_files())
    cycles = _cycles(graph)
    # One cycle per group is shown; breaking it may leave others in the same group.
    assert not cycles, "import cycles (module (line of the import) -> module):\n    " + \
        "\n\n    ".join(f"{_describe(c, graph)}\n    (group: {', '.join(g)})"
                         for c, g in zip(cycles, _groups(graph)))


def test_no_private_names_imported_across_modules() -> None:
    # A private module (tokenmixers._files) may be imported; a private name may not: it
    # belongs to its module, which may change it without warning.
    modules = _module_files()
    found = []
    for module in modules:
        for target, name, line in _imports(module, modules):
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                path = modules[module].relative_to(SRC.parent)
                found.append(f"{path}:{line}: {name} from {target}")
    assert not found, "private names imported from other modules:\n" + "\n".join(found)
