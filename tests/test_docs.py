"""The documentation stays true to the code."""

from __future__ import annotations

from pathlib import Path

from ams.store._docs import render

ROOT = Path(__file__).resolve().parent.parent


def test_format_doc_is_generated_from_the_code() -> None:
    current = (ROOT / "docs" / "format.md").read_text()
    assert current == render(), (
        "docs/format.md is stale: run  python -m ams.store._docs > docs/format.md")


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```")
    assert len(blocks) >= 3
    first = blocks[1]
    assert "scripts/run.sh" in first and "scripts/test.sh" in first
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
