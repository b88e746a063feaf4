"""The docs point at tests that exist: every test docs/reliability.md names is in tests/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_reliability_doc_names_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    defined = {f.name: set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
               for f in (ROOT / "tests").glob("test_*.py")}
    everywhere = set().union(*defined.values())
    named = re.findall(r"(test_\w+\.py)::\s*(test_\w+)(…)?", doc)
    assert len(named) >= 40
    for file, test, cut in named:  # a name cut with … is the start of one
        assert file in defined, file
        found = any(t.startswith(test) for t in defined[file]) if cut else test in defined[file]
        assert found, f"{file}::{test}{cut}"
    # Tests named alone (after a `…::` or in running text) exist somewhere.
    for test in re.findall(r"`(?:…::)?(test_[a-z0-9_]+)`", doc):
        assert test in everywhere, test
