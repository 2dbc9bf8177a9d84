"""Every requirement id cited in the repository (K163, C40, ...) is in docs/requirements.md.

Test names, docstrings and comments cite ids; the document is their key. A new citation without
a line in the document, or a line for an id nothing cites any more, fails here.
"""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT

CITED = re.compile(r"(?<![%\w])[KC]\d{1,3}\b|(?<=_)[kc]\d{1,3}(?=_|\b)")
DOCUMENTED = re.compile(r"^\| ([KC]\d{1,3}) \|", re.MULTILINE)
SCANNED = ("broker", "adapters", "tests", "bench", "migrations")
# Not requirement ids: Unicode's "C0 controls" (named in broker/core/binding.py) look like one.
NOT_IDS = {"C0"}


def cited_ids() -> set[str]:
    found: set[str] = set()
    for folder in SCANNED:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            found.update(m.upper() for m in CITED.findall(path.read_text("utf-8")))
    return found - NOT_IDS


def test_every_cited_requirement_id_is_explained_once_and_nothing_else() -> None:
    text = (REPO_ROOT / "docs" / "requirements.md").read_text("utf-8")
    documented = DOCUMENTED.findall(text)
    assert len(documented) == len(set(documented)), "an id is explained twice"
    cited = cited_ids()
    assert cited, "the scan found no citations at all"
    assert sorted(cited - set(documented)) == [], "cited but not in docs/requirements.md"
    assert sorted(set(documented) - cited) == [], "in docs/requirements.md but cited nowhere"
