"""The shape of the code: no import cycles, small modules and functions, torch only on the worker side."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import flashbench

PACKAGE = Path(flashbench.__file__).resolve().parent
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "kernels" not in p.relative_to(PACKAGE).parts)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = ["flashbench", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported flashbench module, line, at module level) for every import in the file,
    lazy ones (inside functions) included."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rpartition(".")[0]
            if name in MODULES and name != module:
                found.append((name, node.lineno, id(node) in top))
    return found


def test_no_import_cycles():
    graph = {m: {n for n, _, _ in _imports(p, m)} for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    for m in graph:
        graph[m] = {n for n in graph[m] if not (m == "flashbench" or n.startswith(m + "."))}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_are_small(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{lines} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


@pytest.mark.parametrize("package", ["core", "sweep", "results"])
def test_the_parent_side_never_imports_torch_at_module_level(package):
    for path in SOURCES:
        if path.relative_to(PACKAGE).parts[0] != package:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.split(".")[0] in ("torch", "triton"), (path, node.lineno)
                assert not name.startswith("flashbench.measure"), (path, node.lineno)


def test_core_imports_nothing_of_the_sweep_measure_results_or_output():
    for module, path in MODULES.items():
        if module.startswith("flashbench.core"):
            for name, line, _ in _imports(path, module):
                assert name.startswith("flashbench.core"), (module, line, name)


def test_importing_flashbench_and_its_help_load_neither_torch_pandas_nor_triton():
    code = ("import sys, flashbench, flashbench.cli\n"
            "from typer.testing import CliRunner\n"
            "CliRunner().invoke(flashbench.cli.app, ['--help'])\n"
            "print(sorted(m for m in ('torch', 'pandas', 'triton', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
