"""The package layering, checked from the source: imports run one way, and no file imports
itself through others.

The import graph is read with ``ast`` from every file under ``gateway/``. Imports inside
functions count as much as those at the top (a lazy import is still a dependency); only
imports under ``if TYPE_CHECKING`` are left out, as they never run.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"

# Modules anyone may import; they import only each other.
FOUNDATION = {
    "gateway",
    "gateway.backoff",
    "gateway.config",
    "gateway.config_camera_network",
    "gateway.config_reader",
    "gateway.config_tls",
    "gateway.files",
    "gateway.fleet",
    "gateway.limits",
    "gateway.passwords",
    "gateway.safexml",
    "gateway.soap",
    "gateway.log",
    "gateway.loop_watch",
    "gateway.store",
    "gateway.cancellation",
    "gateway.tls",
}
# Higher layers may import lower ones, never the other way round. Within a layer, packages
# may import each other as long as no two import each other (checked below).
LAYERS: dict[str, int] = {
    "codecs": 0,
    "rtp": 0,
    "digest": 0,
    "rtsp": 1,
    "media": 1,
    "workers": 1,
    "onvif": 2,
    "devices": 2,
    "policy": 2,
    "egress": 2,
    "admin": 2,
    "view": 2,
    "runtime": 3,
    "cli": 3,
    "sections": 3,
    "ports": 3,
    "schema": 3,
    "__main__": 3,
    "sim": 3,
}


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the gateway modules it imports (a package's ``__init__`` counts as one)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    if not is_package:
                        base.pop()
                    base = base[: len(base) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    # ``from gateway.x import y``: y is a module, or a name in module x.
                    targets.append(full if known(full) == full else source)
            for target in targets:
                found = known(target) if target.split(".")[0] == "gateway" else None
                if found is not None and found != module:
                    graph[module].add(found)
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    # A subsystem's `commands` module is its part of the command line, registered by
    # gateway.cli: it sits in the CLI's layer, above every service; so does a `*_commands`
    # module holding some of those commands (gateway.report_commands: check's and status's).
    if len(parts) > 1 and (parts[-1] == "commands" or parts[-1].endswith("_commands")):
        return "cli"
    return parts[1] if len(parts) > 1 else "gateway"


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(group)
    return found


def test_every_package_has_a_layer() -> None:
    modules = module_files()
    unplaced = {
        package_of(m) for m in modules if m not in FOUNDATION and package_of(m) not in LAYERS
    }
    assert not unplaced, f"give these a layer in tests/test_layers.py: {sorted(unplaced)}"


def test_no_file_imports_itself_through_others() -> None:
    found = cycles(import_graph(module_files()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(g)) for g in found)


def test_imports_never_go_up_a_layer() -> None:
    wrong = []
    for module, targets in import_graph(module_files()).items():
        for target in targets:
            if target in FOUNDATION:
                continue
            if module in FOUNDATION:
                wrong.append(f"{module} (foundation) imports {target}")
                continue
            here, there = package_of(module), package_of(target)
            if here != there and LAYERS[there] > LAYERS[here]:
                wrong.append(f"{module} (layer {LAYERS[here]}) imports {target} ({LAYERS[there]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_two_packages_import_each_other() -> None:
    graph = import_graph(module_files())
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if package_of(module) != package_of(target):
                packages[package_of(module)].add(package_of(target))
    found = cycles(packages)
    assert not found, "package cycles: " + "; ".join(" <-> ".join(sorted(g)) for g in found)


def test_the_checks_see_lazy_imports_and_skip_type_checking(tmp_path: Path) -> None:
    """The graph reader itself, on a made-up tree: a lazy import is an edge, a
    TYPE_CHECKING one is not, and a cycle through a function body is found."""
    files = {
        "gateway.a": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway.c import X\n"
        "def f():\n    from gateway.b import g\n",
        "gateway.b": "import gateway.a\n",
        "gateway.c": "",
    }
    modules = {}
    for name, text in files.items():
        path = tmp_path / (name.replace(".", "_") + ".py")
        path.write_text(text)
        modules[name] = path
    graph = import_graph(modules)
    assert graph["gateway.a"] == {"gateway.b"}
    assert cycles(graph) == [{"gateway.a", "gateway.b"}]
