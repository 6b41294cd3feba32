"""The layout keeps the data flow visible: imports only go down the layers, and no module imports in a circle.

http → core → sessions → services (servers/*, process) → webrtc → stream; files (memfs, diskfs,
cleanup) is a service that imports nothing of ours, and process uses it to run its outputs' cleanup
rules. Read from the sources (every import, also the ones under ``TYPE_CHECKING`` or inside
functions), so a new module is covered as soon as it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "dragonfork"

FOUNDATION = {
    "dragonfork",
    "dragonfork.config",
    "dragonfork.settings_service",
    "dragonfork.atomic_file",
    "dragonfork.metrics",
    "dragonfork.metrics_history",
    "dragonfork.logs",
}
"""Modules every layer may use: the version, the one settings model (and its service, which a service uses to
declare the settings it reloads), crash-safe file writes, the metrics (and their recent history), logging."""

ALLOWED: dict[str, set[str]] = {
    "dragonfork.stream": set(),
    "dragonfork.files": set(),
    "dragonfork.webrtc": {"dragonfork.stream"},
    "dragonfork.process": {"dragonfork.stream", "dragonfork.files"},
    "dragonfork.servers": {"dragonfork.stream", "dragonfork.webrtc"},
    # who watches what: it observes the services (viewers of servers/whep, processes' network I/O)
    "dragonfork.sessions": {"dragonfork.process", "dragonfork.servers"},
    "dragonfork.core": {
        "dragonfork.stream",
        "dragonfork.webrtc",
        "dragonfork.process",
        "dragonfork.servers",
        "dragonfork.files",
        "dragonfork.sessions",
    },
}
"""For each layer, the layers below it that it may import (besides itself and the foundation)."""

NEVER_FROM_THE_SERVER = ("dragonfork.bench", "dragonfork.loadtest")
"""The tools: they may drive the server's code; the server never imports them."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The dragonfork modules a source file imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # ``from pkg import module``
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str | None:
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if layer_of(name)))
def test_a_module_imports_only_its_own_layer_the_layers_below_and_the_foundation(module: str) -> None:
    layer = layer_of(module)
    assert layer is not None
    allowed = ALLOWED[layer] | {layer}
    upward = sorted(
        imported
        for imported in GRAPH[module]
        if imported not in FOUNDATION and layer_of(imported) not in allowed
    )
    assert not upward, f"{module} imports {upward}: above its layer {layer} (allowed: {sorted(allowed)})"


def test_the_server_never_imports_the_tools() -> None:
    offenders = sorted(
        f"{module} → {imported}"
        for module, imported_modules in GRAPH.items()
        if not module.startswith(NEVER_FROM_THE_SERVER) and module != "dragonfork.cli"
        for imported in imported_modules
        if imported.startswith(NEVER_FROM_THE_SERVER)
    )
    assert not offenders, f"server code importing a tool: {offenders}"


def test_no_module_imports_in_a_circle() -> None:
    """Tarjan's strongly connected components over the module graph: every component is one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in GRAPH[module] - {module} - _packages_of(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, f"modules importing each other in a circle: {circles}"


def _packages_of(module: str) -> set[str]:
    """A module's enclosing packages: importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first,
    which is not an import *of* them that could close a circle."""
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def test_the_layers_exist() -> None:
    """The folders this test guards are the ones the code lives in (a rename must update this test)."""
    for layer in ALLOWED:
        assert any(module == layer or module.startswith(layer + ".") for module in GRAPH), layer
    assert "dragonfork.servers.whep.server" in GRAPH and "dragonfork.stream.ingest.rtp_udp" in GRAPH
