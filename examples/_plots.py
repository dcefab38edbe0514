"""Figures with their seed spread: a median line, a min-max band, the book's number marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def band(
    ax: Any,
    curves: Sequence[Sequence[float]],
    label: str,
    *,
    x: Sequence[float] | None = None,
    color: Any = None,
    ls: str = "-",
    lw: float = 1.3,
) -> None:
    """Median over the curves (one per seed) as a line, min to max as a shaded band."""
    a = np.asarray(curves, dtype=np.float64)
    xs = np.arange(a.shape[1]) if x is None else np.asarray(x)
    n = len(a)
    (line,) = ax.plot(xs, np.median(a, 0), ls=ls, lw=lw, color=color, label=f"{label}")
    if n > 1:
        ax.fill_between(xs, a.min(0), a.max(0), color=line.get_color(), alpha=0.2, lw=0)


def book_mark(
    ax: Any, y: float, x: float | None = None, *, color: Any = "k", label: str | None = "book"
) -> None:
    """The book's value: a star at (x, y), or a dotted horizontal line at y."""
    if x is None:
        ax.axhline(y, color=color, ls=":", lw=1, label=label)
    else:
        ax.plot([x], [y], marker="*", ms=9, color=color, ls="none", mec="k", mew=0.5, label=label)


def seeds_note(seeds: Sequence[int]) -> str:
    """The figure's caption fragment: what the lines and bands are."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"median and min-max over seeds {', '.join(map(str, seeds))}"
