"""Tables in the README and docs/ are exactly what the report prints from the committed records."""

from __future__ import annotations

from pathlib import Path

import pytest

from metairm_pl.reporting.embedded import blocks_in, main, refresh

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_embedded_table_is_regenerated_from_the_records(path):
    text = path.read_text()
    _, changed = refresh(text, ROOT)
    assert not changed, f"{path.name}: tables that the records in results/ do not give: {changed}"


def test_the_readme_headline_table_comes_from_the_records():
    (block,) = blocks_in((ROOT / "README.md").read_text())
    assert block.args.startswith("results/") and "| algorithm |" in block.body


def test_a_changed_number_is_caught_and_rewritten(tmp_path):
    fixture_block = "<!-- report: runs --selection last -->\n<!-- /report -->\n"
    regenerated, changed = refresh("Intro.\n\n" + fixture_block, FIXTURES)
    assert changed == ["runs --selection last"] and "| erm |" in regenerated
    assert refresh(regenerated, FIXTURES)[1] == []  # stable
    body = blocks_in(regenerated)[0].body
    first_number = next(token for token in body.split() if token.replace(".", "").isdigit() and "." in token)
    tampered = regenerated.replace(first_number, "99.9", 1)
    page = tmp_path / "page.md"
    page.write_text(tampered)
    assert main([str(page), "--root", str(FIXTURES), "--check"]) == 1
    assert page.read_text() == tampered  # --check writes nothing
    assert main([str(page), "--root", str(FIXTURES)]) == 0 and page.read_text() == regenerated


def test_a_block_can_demand_seeds_and_its_table_names_the_missing_ones():
    demanding = "<!-- report: runs --selection last --expect-seeds 12 -->\n<!-- /report -->\n"
    regenerated, _ = refresh(demanding, FIXTURES)
    assert "11 missing |" in regenerated  # the fixtures have fewer than 12 seeds per row
    plain, _ = refresh(demanding.replace(" --expect-seeds 12", ""), FIXTURES)
    assert "missing" not in plain
