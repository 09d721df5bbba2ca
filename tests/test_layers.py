"""The package's layers depend downward only, without cycles, and the core never imports a plug-in.

Every import of every module of mask2former and semask is read from its source, at module level and deferred
(inside functions) alike, and each module is placed in the lowest layer whose prefix names it (LAYERS). An import
of a higher layer, an import of the plug-in from the core, or a cycle between modules fails, naming the modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# Lowest first; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("files: readers, writers and small utilities", ("mask2former.errors", "mask2former.utils", "mask2former.io")),
    ("config", ("mask2former.config",)),
    ("data", ("mask2former.data", "mask2former.evaluation")),
    ("modeling", ("mask2former.modeling", "semask")),
    ("inference and training", ("mask2former.inference", "mask2former.engine", "mask2former.export")),
    ("pipeline", ("mask2former.pipeline",)),
    ("viewer", ("mask2former.viewer", "mask2former")),
]
CORE, PLUGINS = "mask2former", ("semask",)


def package_modules() -> dict[str, Path]:
    modules = {}
    for package in (CORE, *PLUGINS):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its source (a `from X import y` of a module y counts as y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(name: str) -> int:
    best, best_length = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best >= 0, f"{name} is in no layer: add it to LAYERS"
    return best


def layer_problems(graph: dict[str, set[str]]) -> list[str]:
    """Every upward import, core-imports-plug-in and cycle in `graph` (module -> the modules it imports)."""
    problems = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(name):
                problems.append(
                    f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                )
            if name.split(".")[0] == CORE and target.split(".")[0] in PLUGINS:
                problems.append(f"{name} imports the plug-in {target}: the entry point imports plug-ins")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_layers_depend_downward_only_without_cycles() -> None:
    problems = layer_problems(import_graph())
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_an_upward_import_and_a_cycle() -> None:
    graph = import_graph()
    graph["mask2former.data.mapper"] = graph["mask2former.data.mapper"] | {"mask2former.engine.launch"}
    graph["mask2former.io.files"] = graph["mask2former.io.files"] | {"mask2former.utils.cli"}
    graph["mask2former.utils.cli"] = graph["mask2former.utils.cli"] | {"mask2former.io.files"}
    graph["mask2former.modeling.meta_arch"] = graph["mask2former.modeling.meta_arch"] | {"semask.meta_arch"}
    problems = layer_problems(graph)
    assert "mask2former.data.mapper (data) imports mask2former.engine.launch (inference and training)" in problems
    assert any(p.startswith("import cycle: ") and "mask2former.utils.cli" in p for p in problems), problems
    assert any("imports the plug-in semask.meta_arch" in p for p in problems), problems


def test_building_the_config_imports_no_model_and_no_plugin() -> None:
    code = (
        "import sys; from mask2former.config import get_cfg; get_cfg(); "
        "print(sorted(m for m in sys.modules if m.startswith(('semask', 'mask2former.modeling'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stdout


def test_an_unknown_name_in_a_registry_is_one_line_naming_the_key_and_the_closest_name(sample_root, tmp_path) -> None:
    """Every registry is read through one lookup (mask2former/utils/registry.py): a user error, not a KeyError."""
    from conftest import tiny_run_argv

    argv = tiny_run_argv(sample_root, tmp_path / "out", "MODEL.BACKBONE.NAME", "D2SwinTransformr")
    result = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *argv], capture_output=True, text=True, cwd=REPO
    )
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        "train_net.py" in last
        and ("MODEL.BACKBONE.NAME 'D2SwinTransformr' is not registered; did you mean 'D2SwinTransformer'? Registered: ")
        in last
    ), last
