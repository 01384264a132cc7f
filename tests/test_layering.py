"""The layering rules: diffubias imports no gradio/sqlalchemy; storage imports no torch/gradio;
the modules of diffubias import each other without a cycle; no module of diffubias, ui or storage
grows past MAX_LINES (one concept per file)."""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "diffubias": ("gradio", "sqlalchemy"),
    "storage": ("torch", "gradio"),
}
MAX_LINES = 400
SIZE_CHECKED = ("diffubias", "ui", "storage")
SIZE_EXEMPT = (Path("storage/migrations"),)  # each migration is a frozen record, not a concept


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_layers(package):
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / package).rglob("*.py")
                     if p.stem != "__main__" and "migrations" not in p.parts)
    imports = "; ".join(f"import {m}" for m in modules)
    code = (f"import sys; {imports}; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout.split()
    bad = [m for m in FORBIDDEN[package] if m in loaded]
    assert not bad, f"{package} imports {bad}"


# ---------------------------------------------------------------------------------------------
# Import cycles


def module_files(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` and its subpackages."""
    return {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for path in sorted((root / package).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_statements(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under `node`, at module level or inside functions and classes, except in the
    body of `if TYPE_CHECKING:` (its `else:` runs, so it counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.orelse:
                yield from _import_statements(ast.Module(body=[statement], type_ignores=[]))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_statements(child)


def import_graph(package: str, root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {module of `package` it imports: line of its first such import}."""
    files = module_files(package, root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for statement in _import_statements(ast.parse(path.read_text(), str(path))):
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
            else:
                base = statement.module or ""
                if statement.level:  # relative: from the module's own package upwards
                    parts = module.split(".")[: None if path.name == "__init__.py" else -1]
                    parts = parts[: len(parts) - statement.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from pkg import name`: the submodule pkg.name when there is one, else pkg
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in statement.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a non-module c
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.setdefault(target, statement.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """(cycle, others) per group of modules that reach each other through imports: `cycle` is a
    shortest one from the group's alphabetically first module back to itself, `others` the rest
    of the group. [] when the graph has no cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        cycle: list[str] = []
        while not cycle:  # breadth first: the shortest way back to start (one exists)
            following = []
            for node in frontier:
                for target in sorted(graph[node]):
                    if target == start and not cycle:
                        cycle = paths[node] + [start]
                    elif target in group and target not in paths:
                        paths[target] = paths[node] + [target]
                        following.append(target)
            frontier = following
        found.append((cycle, sorted(group - set(cycle))))
    return sorted(found)


def describe_cycle(cycle: list[str], others: list[str], graph: dict[str, dict[str, int]],
                   files: dict[str, Path]) -> str:
    lines = ["  " + " -> ".join(cycle)]
    lines += [f"    {files[a].relative_to(ROOT).as_posix()}:{graph[a][b]} imports {b}"
              for a, b in zip(cycle, cycle[1:])]
    if others:
        lines.append(f"    (also caught in this loop: {', '.join(others)})")
    return "\n".join(lines)


def test_the_cycle_finder_names_each_loop():
    graph = {"p.a": {"p.b": 3}, "p.b": {"p.c": 5}, "p.c": {"p.a": 7, "p.d": 8}, "p.d": {},
             "p.e": {"p.f": 1, "p.g": 1}, "p.f": {"p.e": 2}, "p.g": {"p.f": 4}}
    assert cycles(graph) == [(["p.a", "p.b", "p.c", "p.a"], []),
                             (["p.e", "p.f", "p.e"], ["p.g"])]
    assert cycles({"p.a": {"p.b": 1}, "p.b": {}}) == []


def test_the_import_graph_counts_function_imports_but_not_type_checking_ones(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("import numpy\nimport pkg.a.missing_attribute\n")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.a import f\nelse:\n    from .sub.leaf import x\n")
    assert import_graph("pkg", tmp_path) == {
        "pkg": {}, "pkg.a": {"pkg.b": 2}, "pkg.b": {"pkg.sub.leaf": 5},
        "pkg.sub": {"pkg.sub.leaf": 1}, "pkg.sub.leaf": {"pkg.a": 2},
    }


def test_diffubias_has_no_import_cycles():
    graph = import_graph("diffubias")
    found = cycles(graph)
    files = module_files("diffubias")
    assert not found, (
        f"{len(found)} import cycle(s) inside diffubias (imports inside functions count, "
        "`if TYPE_CHECKING:` ones do not); move what both sides need into a module of its own:\n"
        + "\n".join(describe_cycle(cycle, others, graph, files) for cycle, others in found)
    )


# ---------------------------------------------------------------------------------------------
# Module size


def oversized_modules() -> list[tuple[str, int]]:
    """(path, line count) of every module over MAX_LINES, longest first."""
    found = []
    for package in SIZE_CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if any(relative.is_relative_to(exempt) for exempt in SIZE_EXEMPT):
                continue
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                found.append((relative.as_posix(), lines))
    return sorted(found, key=lambda item: (-item[1], item[0]))


def test_no_module_is_over_max_lines():
    found = oversized_modules()
    assert not found, (
        f"{len(found)} module(s) over {MAX_LINES} lines; split each into modules of one concept:\n"
        + "\n".join(f"  {path}: {lines} lines" for path, lines in found)
    )


def loaded_by(statement: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of `candidates` a fresh interpreter has imported after `statement`."""
    code = f"import sys; {statement}; print([m for m in {candidates!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip())


def test_building_the_page_imports_no_torch():
    """The page is served before the library loads (a warm-up imports it afterwards)."""
    assert loaded_by("import app", ("torch", "sklearn", "diffusers", "transformers")) == []


def test_the_entry_imports_nothing_heavy():
    """ui/launch.py answers the port before anything heavy loads (tests/test_launch.py)."""
    assert loaded_by("import ui.launch", ("gradio", "torch", "numpy", "sqlalchemy", "app")) == []
