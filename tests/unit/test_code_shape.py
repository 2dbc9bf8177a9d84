"""The code's shape rules (issue 12): checked on every `make test`, so the map stays readable.

- no import cycle between product modules (function-local and TYPE_CHECKING imports included);
- the layer and independence contracts in pyproject.toml ([tool.importlinter]) hold, and they do
  fail when a forbidden import is added (the data plane reaching for the control plane);
- no product file over 600 lines; no function over 80 lines unless its docstring says why
  (a paragraph starting "Long:").
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("broker", "adapters")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _product_files() -> list[Path]:
    return sorted(path for package in PRODUCT for path in (ROOT / package).rglob("*.py"))


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            recurse = False
            for j in range(i, len(edges[node])):
                nxt = edges[node][j]
                if nxt not in index:
                    work.append((node, j + 1))
                    work.append((nxt, 0))
                    recurse = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if recurse:
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_product_modules_import_each_other_without_cycles() -> None:
    graph = grimp.build_graph(*PRODUCT, include_external_packages=False)
    assert _cycles(graph) == []


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_fail_when_the_data_plane_imports_the_control_plane(
    tmp_path: Path,
) -> None:
    for package in PRODUCT:
        shutil.copytree(ROOT / package, tmp_path / package)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    ingress = tmp_path / "broker" / "dataplane" / "ingress.py"
    ingress.write_text(
        ingress.read_text() + "\nfrom broker.controlplane.store import Store  # noqa\n"
    )
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "broker.dataplane.ingress -> broker.controlplane.store" in result.stdout


@pytest.mark.parametrize("path", _product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_product_file_stays_short(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def test_product_functions_read_in_one_screen_or_say_why() -> None:
    long_ones = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if length > MAX_FUNCTION_LINES and "Long:" not in doc:
                long_ones.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert long_ones == []
