"""The README and the docs site: the site builds strictly, links resolve, examples run as written.

- ``mkdocs build --strict`` succeeds (mkdocs.yml at the repository root, pages in docs/, the
  API reference rendered from the docstrings by mkdocstrings);
- every relative link and image in README.md and docs/*.md points to a file that exists (so
  they work on GitHub as on the site);
- README.md stays a user's page (at most 250 lines) and every ```python block in it runs as
  written in a fresh interpreter (a block preceded by ``<!-- no-run -->`` is left out);
- no page tells the code's history.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
GENERATED = {DOCS / "results.md"}  # written by examples/run_all.py

MAX_README_LINES = 250
HISTORY_WORDS = ("used to", "predates", "no longer", "after the redesign")

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
PYTHON_BLOCK = re.compile(r"(?:^<!-- no-run -->\n)?^```python\n(.*?)^```$", re.M | re.S)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans (links there are code)."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            inside = not inside
            continue
        if not inside:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def _relative_links(page: Path) -> list[str]:
    targets = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            continue  # a URL, a mail address, an anchor on the same page, a site-absolute path
        targets.append(target)
    return targets


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if (
        importlib.util.find_spec("mkdocstrings") is None
        or importlib.util.find_spec("material") is None
    ):
        pytest.skip("mkdocs-material / mkdocstrings not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    for page in ("optimizers", "nn", "distributed", "data", "testing", "performance", "api",
                 "frameworks", "results"):  # fmt: skip
        assert (site / page / "index.html").is_file(), f"the site has no {page} page"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("torch_dlbasics.optim.Adam", "torch_dlbasics.nn.SyncBatchNorm", "load_mnist"):
        assert name in api, f"the API reference lacks {name}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    missing = []
    for target in _relative_links(page):
        path = unquote(target.split("#", 1)[0])
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES})"


def _readme_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [m.group(1) for m in PYTHON_BLOCK.finditer(text) if not m.group(0).startswith("<!--")]


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_python_block_runs_as_written(index: int, tmp_path: Path) -> None:
    code = _readme_blocks()[index]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # the installed package, as a reader would have it
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"README python block {index} failed:\n{code}\n{proc.stderr}"


def test_readme_has_python_blocks() -> None:
    assert len(_readme_blocks()) >= 2


@pytest.mark.parametrize(
    "page", [p for p in _pages() if p not in GENERATED], ids=lambda p: str(p.relative_to(REPO))
)
def test_no_history_words(page: Path) -> None:
    text = page.read_text(encoding="utf-8").lower()
    found = [w for w in HISTORY_WORDS if re.search(rf"\b{re.escape(w)}\b", text)]
    assert not found, f"{page.relative_to(REPO)} tells history: {found}"
