"""The docs name only modules that exist: every ``broker/...`` or ``adapters/...`` path and every
``broker.x.y`` dotted module in README.md and docs/*.md is a file or package of the tree (issue
12: the layout description had drifted from the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.-])((?:broker|adapters)/[\w/]*\w(?:\.py)?/?)")
DOTTED = re.compile(r"(?<![\w./-])(broker(?:\.[a-z_]\w*)+)(?![\w-])")
FILES = (".yaml", ".yml", ".json", ".db")
# A kubectl/cemesh resource reference (`broker/default`) is not a path.
COMMAND = re.compile(r"\b(kubectl|cemesh) ")


def _exists_as_path(text: str) -> bool:
    path = ROOT / text.rstrip("/")
    return path.exists() or path.with_suffix(".py").exists()


def _exists_as_module(dotted: str) -> bool:
    # broker.a.b.Name: some prefix of the name must be a module, and the rest attributes
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:end])
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_paths_and_modules_that_exist(doc: Path) -> None:
    lines = [line for line in doc.read_text().splitlines() if not COMMAND.search(line)]
    text = "\n".join(lines)
    missing = sorted({p for p in PATH.findall(text) if not _exists_as_path(p)})
    missing += sorted(
        {m for m in DOTTED.findall(text) if not m.endswith(FILES) and not _exists_as_module(m)}
    )
    assert missing == []
