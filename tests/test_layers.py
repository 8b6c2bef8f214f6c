"""The layering rule, enforced: imports run one way and nothing imports in a circle (docs/architecture.md).

    cli -> testing -> patches -> (facade) -> model_zoo -> integration -> strategies -> engine -> config

Every module of the installed package is parsed (ast, nothing imported), every `import` is collected, including
those inside functions (a lazy import is still a dependency), and each one that points into tango_plugin must go to
the same layer or a lower one. The package facade `tango_plugin/__init__.py` is the public API; it imports the
model families and everything below them, so it sits just above `model_zoo`: the integrations and the CLI may use it,
nothing at or below the model families may (it would hide an upward arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each installed sub-package lives in the source tree (pyproject's package-dir mapping)
SOURCE_DIRS = {"tango_plugin": ROOT / "tango_plugin", "tango_plugin.model_zoo": ROOT / "model_zoo",
               "tango_plugin.patches": ROOT / "patches"}

# top to bottom; a module belongs to the first layer whose prefix matches its dotted name
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("cli", ("tango_plugin.cli",)),
    ("testing", ("tango_plugin.testing",)),
    ("patches", ("tango_plugin.patches",)),
    ("facade", ("tango_plugin",)),  # "tango_plugin" alone: the package's __init__
    ("model_zoo", ("tango_plugin.model_zoo",)),
    ("integration", ("tango_plugin.integration",)),
    ("strategies", ("tango_plugin.strategies",)),
    ("engine", ("tango_plugin.engine",)),
    ("config", ("tango_plugin.config", "tango_plugin.registry", "tango_plugin.presets", "tango_plugin.table",
                "tango_plugin.knobs")),
]


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if p == "tango_plugin":
                if module == "tango_plugin":
                    return rank
            elif module == p or module.startswith(p + "."):
                return rank
    raise AssertionError(f"module {module} belongs to no layer: add it to LAYERS in tests/test_layers.py")


def discover(source_dirs: Dict[str, Path]) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    modules = {}
    for package, folder in source_dirs.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [] if rel.parts == ("__init__",) else list(rel.parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(module: str, path: Path, known: Set[str]) -> Set[str]:
    """The tango_plugin modules `module` imports (resolved; `from pkg import sub` counts as `pkg.sub`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            # the longest known module that is a prefix of the imported name
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("tango_plugin"):
                found.add(name)
    found.discard(module)
    return found


def violations(source_dirs: Dict[str, Path]) -> Tuple[List[str], List[List[str]]]:
    """(upward imports, import cycles) of the package in `source_dirs`."""
    modules = discover(source_dirs)
    known = set(modules)
    graph = {m: imports_of(m, p, known) for m, p in modules.items()}
    for m in graph:
        layer_of(m)  # every module has a layer
    upward = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if layer_of(t) < layer_of(m):
                upward.append(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})")
    return upward, cycles(graph)


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_run_one_way_and_never_in_a_circle():
    upward, loops = violations(SOURCE_DIRS)
    assert not upward, "imports that run upward:\n" + "\n".join(upward)
    assert not loops, f"import cycles: {loops}"


def test_every_module_has_a_layer():
    for module in discover(SOURCE_DIRS):
        layer_of(module)


def test_the_engine_never_imports_transformers():
    for module, path in discover(SOURCE_DIRS).items():
        if layer_of(module) >= layer_of("tango_plugin.strategies"):
            tree = ast.parse(path.read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
            assert not {n for n in names if n.split(".")[0] == "transformers"}, module


def _copy_with(tmp_path: Path, extra: Dict[str, str]) -> Dict[str, Path]:
    """The package's sources copied to tmp_path, with some files added or replaced (relative path -> text)."""
    import shutil

    dirs = {}
    for package, folder in SOURCE_DIRS.items():
        dest = tmp_path / folder.name
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("__pycache__"))
        dirs[package] = dest
    for rel, text in extra.items():
        (tmp_path / rel).write_text(text)
    return dirs


@pytest.mark.parametrize("rel,text,expect", [
    # the engine reaching up to the strategies (the circle this rule was written for)
    ("tango_plugin/engine/extra.py", "from ..strategies import run_strategy\n", "engine.extra (engine) imports"),
    # a module that fits no layer
    ("tango_plugin/strategies_helper.py", "", None),
    # a lazy import inside a function counts too
    ("tango_plugin/engine/lazy.py", "def f():\n    from tango_plugin.integration import api\n",
     "engine.lazy (engine) imports tango_plugin.integration.api"),
    # a model family importing the CLI
    ("model_zoo/bad.py", "import tango_plugin.cli.run\n", "model_zoo.bad (model_zoo) imports tango_plugin.cli.run"),
    # an adapter going through the facade
    ("model_zoo/facade.py", "import tango_plugin as tango\n", "imports tango_plugin (facade)"),
])
def test_the_rule_catches_an_upward_import_added_on_purpose(tmp_path, rel, text, expect):
    if expect is None:  # a module outside every layer is itself an error
        dirs = _copy_with(tmp_path, {rel: text})
        with pytest.raises(AssertionError, match="belongs to no layer"):
            violations(dirs)
        return
    upward, _ = violations(_copy_with(tmp_path, {rel: text}))
    assert any(expect in line for line in upward), upward


def test_the_rule_catches_a_cycle(tmp_path):
    dirs = _copy_with(tmp_path, {"tango_plugin/engine/a.py": "from . import b\n",
                                 "tango_plugin/engine/b.py": "from .a import x\n"})
    _, loops = violations(dirs)
    assert ["tango_plugin.engine.a", "tango_plugin.engine.b"] in loops
