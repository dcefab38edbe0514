"""The numbers the docs quote are the committed JSON's, and docs/results.md is generated from it.

A page quotes a result as ``<!-- result:KEY -->VALUE`` (``examples/_report.py``); every such
marker in README.md and docs/*.md must carry exactly the value that ``_report.numbers`` derives
from the committed ``docs/figures/*.json``, and docs/results.md must be what ``_report.render``
writes from it. That quick reruns reproduce the committed quick JSON is checked in
tests/test_examples.py, next to each example's own test. Together: a change that moves a result
fails CI until ``python examples/run_all.py`` (full and ``--quick``) regenerated figures, JSON
and text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "docs" / "figures"


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import _report

        yield _report
    finally:
        sys.path.remove(str(REPO / "examples"))


def _pages() -> list[Path]:
    return [p for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))] if p.is_file()]


def test_every_quoted_number_is_the_committed_jsons(report) -> None:
    numbers = report.numbers(FIGURES)
    quoted = 0
    for page in _pages():
        for key, value in report.MARKER.findall(page.read_text()):
            assert key in numbers, f"{page.name}: no result {key!r} in docs/figures/*.json"
            assert value == numbers[key], (
                f"{page.name}: {key} says {value}, the JSON gives {numbers[key]}"
            )
            quoted += 1
    if (REPO / "docs" / "results.md").is_file():
        assert quoted >= 50  # the results page alone quotes more


def test_results_page_is_generated_from_the_json(report) -> None:
    page = REPO / "docs" / "results.md"
    if not page.is_file():
        pytest.skip("no docs/results.md yet (python examples/run_all.py writes it)")
    assert page.read_text() == report.render(FIGURES, report.numbers(FIGURES)), (
        "docs/results.md is not what examples/run_all.py writes from docs/figures/*.json: rerun it"
    )


@pytest.mark.parametrize("figures", [FIGURES, FIGURES / "quick"], ids=["full", "quick"])
def test_results_json_is_current(report, figures: Path) -> None:
    path = figures / "results.json"
    if not path.is_file():
        pytest.skip(f"no {path.relative_to(REPO)} yet")
    assert json.loads(path.read_text()) == report.numbers(figures)


def test_markers_are_parsed_as_written(report) -> None:
    n = {"a/b/median": "0.258", "a/b/min": "0.2", "a/b/max": "0.3"}
    text = f"| x | {report.rng(n, 'a/b')} |"
    assert report.MARKER.findall(text) == [("a/b/median", "0.258"), ("a/b/min", "0.2"), ("a/b/max", "0.3")]


def test_refresh_markers_rewrites_stale_values_and_refuses_unknown_keys(report, tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("a <!-- result:x/median -->0.1 and <!-- result:y -->2 | end\n")
    assert report.refresh_markers(page, {"x/median": "0.25", "y": "2"})
    assert page.read_text() == "a <!-- result:x/median -->0.25 and <!-- result:y -->2 | end\n"
    assert not report.refresh_markers(page, {"x/median": "0.25", "y": "2"})  # already current
    with pytest.raises(KeyError, match="quotes result 'y'"):
        report.refresh_markers(page, {"x/median": "0.3"})
    assert page.read_text() == "a <!-- result:x/median -->0.25 and <!-- result:y -->2 | end\n"
