"""The import graph of the project: one tower, no cycle, no import running back up, no hidden import.

Edges are read from the source (``ast``), not from a running interpreter, so every import counts:
module-level and function-level ones, ``importlib.import_module("...")`` calls, and import paths
written as strings (``lightning_modules``' lazy ``_EXPORTS`` table, the ``"module:function"``
runners of ``dcls-zoo``'s command registry).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGES = ("dcls_zoo", "lightning_modules")
_DOTTED = re.compile(r"^\.?[A-Za-z_][\w.]*(?::\w+)?$")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


MODULES = {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _resolve(name: str, package: str) -> str | None:
    """The project module ``name`` (maybe relative to ``package``) names, or None if not ours."""
    if name.startswith("."):
        level = len(name) - len(name.lstrip("."))
        base = package.rsplit(".", level - 1)[0] if level > 1 else package
        name = f"{base}.{name.lstrip('.')}".rstrip(".")
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(path: Path) -> Iterator[tuple[str, int, bool]]:
    """``(imported project module, line, at module level?)`` for every import of ``path``."""
    tree = ast.parse(path.read_text())
    package = _package_of(path)
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names = [f"{base}{alias.name}" if node.module is None else f"{base}.{alias.name}" for alias in node.names]
            for name in names:  # "from x import y": y may be a module of x, else x itself is the edge
                target = _resolve(name, package) or _resolve(base, package)
                if target:
                    yield target, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, package)
                if target:
                    yield target, node.lineno, id(node) in top
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            # import paths written as strings: "lightning_modules.commands.train:run", ".method"
            text = node.value.split(":")[0]
            if "." in text.lstrip(".") or text.startswith("."):
                target = _resolve(text, package)
                if target is not None and _written_out(text, target, package):
                    yield target, node.lineno, True


def _written_out(text: str, target: str, package: str) -> bool:
    """Whether the string names ``target`` itself (not a text that merely starts with a package name)."""
    if text.startswith("."):
        return target.endswith(text.lstrip("."))
    return text == target


GRAPH = {name: sorted({target for target, _, _ in _edges(path) if target != name}) for name, path in MODULES.items()}


def test_the_graph_is_read():
    assert len(MODULES) > 40 and "dcls_zoo.export_format" in GRAPH["dcls_zoo.hub.export"]
    assert "lightning_modules.commands.train" in GRAPH["lightning_modules.commands.main"]  # a string edge


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in GRAPH[name]:
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[name] = 2
        return None

    for name in GRAPH:
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_cycle():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_library_never_imports_the_template():
    for name, targets in GRAPH.items():
        if name.startswith("dcls_zoo"):
            assert not [t for t in targets if t.startswith("lightning_modules")], name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_hidden_import_of_our_own_modules(name):
    hidden = [(target, line) for target, line, top in _edges(MODULES[name]) if not top and target != name]
    assert not hidden, f"{name} imports {hidden} inside functions"


def test_rooms_import_only_rooms_below_them():
    """Every module sits one level above the highest module it imports (a package's ``__init__``, its
    face, above its rooms): no room imports one of its own level or above, its package face included."""
    levels: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in levels:
            levels[name] = 0  # a cycle would read as a level-0 target below: test_no_cycle names it
            levels[name] = 1 + max((level(t) for t in GRAPH[name]), default=-1)
        return levels[name]

    for name in GRAPH:
        for target in GRAPH[name]:
            assert level(target) < level(name), (name, target)
    assert max(levels.values()) >= 8  # a tower, not a flat heap of mutual imports


def test_the_public_face_is_small_documented_and_versioned():
    import dcls_zoo

    assert dcls_zoo.__version__ and len(dcls_zoo.__all__) <= 26
    documented = dcls_zoo.__doc__
    assert all(f"`{name}`" in documented or name == "__version__" and "``__version__``" in documented
               or f":func:`{name}`" in documented or f":class:`{name}`" in documented for name in dcls_zoo.__all__)


def test_every_pretrained_config_carries_its_license():
    import timm

    import dcls_zoo

    for name in dcls_zoo.list_models():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.license, name
