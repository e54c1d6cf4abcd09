"""The packages' structure: no import cycle in ``sam/`` and ``landscape/``, ``sam`` never imports
``landscape``, and reading and drawing a surface file needs neither Keras nor TensorFlow.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a project module, at any level (module, class, function, ``if
TYPE_CHECKING``), is an edge.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sam", "landscape")
HEAVY = ("tensorflow", "keras")  # what reading and drawing a surface file must not import
TENSORFLOW_FREE = ("landscape.io", "landscape.surface", "landscape.plot")


def _modules() -> dict[str, pathlib.Path]:
    """``{dotted name: file}`` of every module of the packages (a package is its __init__)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement imports (``from a import b``: ``a.b`` and ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.AST, *, module_level_only: bool):
    """Import statements anywhere, or only those that run on import (not in functions or
    ``if TYPE_CHECKING:`` blocks)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        for child in ast.iter_child_nodes(node):
            skip = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if not (module_level_only and (skip or _is_type_checking(child))):
                stack.append(child)


def imports_of(source: str, module: str, known, *, is_package=False, module_level_only=False):
    """``(project modules, other top-level packages)`` that ``source`` imports."""
    project, other = set(), set()
    tree = ast.parse(source)
    for node in _import_nodes(tree, module_level_only=module_level_only):
        for name in _targets(node, module, is_package):
            top = name.partition(".")[0]
            if top not in PACKAGES:
                other.add(top)
                continue
            while name and name not in known:  # `from a import name`: a itself
                name = name.rpartition(".")[0]
            if name and name != module:
                project.add(name)
    return project, other


def _graph(*, module_level_only=False):
    modules = _modules()
    graph, external = {}, {}
    for name, path in modules.items():
        graph[name], external[name] = imports_of(
            path.read_text(),
            name,
            modules,
            is_package=path.name == "__init__.py",
            module_level_only=module_level_only,
        )
    return graph, external


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_imports_at_every_level():
    known = {"landscape", "landscape.io", "landscape.surface", "landscape.directions", "sam"}
    source = textwrap.dedent(
        """
        import numpy as np
        from landscape import io, __version__
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .directions import Direction
        def f():
            import sam
        """
    )
    project, other = imports_of(source, "landscape.surface", known)
    assert project == {"landscape", "landscape.io", "landscape.directions", "sam"}
    assert other == {"numpy", "typing"}
    on_import, _ = imports_of(source, "landscape.surface", known, module_level_only=True)
    assert on_import == {"landscape", "landscape.io"}


def test_no_import_cycles():
    graph, _ = _graph()
    assert len(graph) > 20 and graph["landscape.surface"]  # the walk found the modules
    assert _cycles(graph) == [], "import cycles (each a set of modules importing each other)"


def test_sam_never_imports_landscape():
    graph, _ = _graph()
    offending = {m: sorted(t for t in targets if t.partition(".")[0] == "landscape")
                 for m, targets in graph.items() if m.partition(".")[0] == "sam"}  # fmt: skip
    assert {m: t for m, t in offending.items() if t} == {}


def test_reading_a_surface_file_loads_no_module_that_imports_tensorflow():
    """What ``import landscape.io / .surface / .plot`` runs (their module-level imports, their
    packages' ``__init__``) imports neither Keras nor TensorFlow."""
    graph, external = _graph(module_level_only=True)
    seen, todo = set(), list(TENSORFLOW_FREE)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        todo += [*graph[module], *parents]
    heavy = {m: sorted(external[m] & set(HEAVY)) for m in sorted(seen) if external[m] & set(HEAVY)}
    assert heavy == {}


def test_loading_and_drawing_a_surface_file_imports_no_tensorflow(tmp_path):
    """``landscape plot existing.h5``'s path, run in a fresh interpreter."""
    script = textwrap.dedent(
        """
        import sys, types
        import matplotlib
        matplotlib.use("Agg")
        import numpy as np
        from landscape import io
        from landscape.plot import plot_surface
        from landscape.surface import Surface

        path = sys.argv[1]
        x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 2)
        d = types.SimpleNamespace(arrays={"w": np.ones(2)}, metadata={"seed": 0})
        io.create_surface_file(path, x=x, y=y, metrics=("train_loss",), directions=(d, d),
                               attrs={})
        io.update_surface_file(path, {"train_loss": np.arange(6.0).reshape(2, 3) + 1},
                               np.ones((2, 3), bool))
        surf = Surface.load(path)
        ax = plot_surface(path, kind="contour")
        assert surf.complete and len(surf.directions) == 2 and ax is not None
        print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s.h5")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ sizes
MAX_FUNCTION_LINES = 60  # outside docstrings
MAX_CLASS_LINES = 300


def _code_lines(node: ast.AST) -> int:
    """Lines of ``node`` that are not docstrings (of it or of anything nested in it)."""
    lines = set(range(node.lineno, node.end_lineno + 1))
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body:
            first = body[0]
            value = getattr(first, "value", None)
            if isinstance(first, ast.Expr) and isinstance(getattr(value, "value", None), str):
                lines -= set(range(first.lineno, first.end_lineno + 1))
    return len(lines)


def test_functions_and_classes_stay_small():
    too_long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION_LINES
            elif isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            else:
                continue
            if _code_lines(node) > limit:
                too_long.append(f"{name}.{node.name}: {_code_lines(node)} lines > {limit}")
    assert not too_long, "\n".join(too_long)


def test_code_lines_count_code_not_docstrings():
    tree = ast.parse('def f():\n    """doc\n    more"""\n    return 1\n')
    assert _code_lines(tree.body[0]) == 2
