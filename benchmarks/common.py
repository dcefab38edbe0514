"""Side-by-side timing: ours and the built-in interleaved in one process (A B A B ...).

Every section of the benchmark (``bench_optim.py``, ``bench_nn.py``, ``bench_e2e.py``) times its
pairs with :func:`compare` and returns rows made by it, so that the table and the JSON have one
shape. Times are medians over ``repeats`` interleaved runs after ``warmup`` runs of each; the
spread is the interquartile range of the per-repeat ratios.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Return a function that times one call of ``fn`` in milliseconds on ``device``."""
    if device.startswith("cuda"):

        def cuda_time(fn: Callable[[], object]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)

        return cuda_time

    def cpu_time(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return cpu_time


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def compare(
    section: str,
    case: str,
    ours: Callable[[], object],
    builtin: Callable[[], object],
    *,
    device: str = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    builtin_name: str = "torch",
    extra: dict | None = None,
) -> dict:
    """Time ``ours`` against ``builtin`` interleaved; return one result row.

    The row holds the medians (ms) of both, the median of the per-repeat ratios ours / built-in
    and its interquartile range, plus whatever ``extra`` adds (GB/s, bytes saved, ...).
    """
    timer = _timer(device)
    for _ in range(warmup):
        timer(ours)
        timer(builtin)
    t_ours: list[float] = []
    t_builtin: list[float] = []
    for i in range(repeats):
        # Alternate which goes first, so neither always runs on a warm (or cold) cache.
        if i % 2 == 0:
            t_ours.append(timer(ours))
            t_builtin.append(timer(builtin))
        else:
            t_builtin.append(timer(builtin))
            t_ours.append(timer(ours))
    ratios = [a / b for a, b in zip(t_ours, t_builtin)]
    row = {
        "section": section,
        "case": case,
        "builtin": builtin_name,
        "device": device,
        "repeats": repeats,
        "ours_ms": statistics.median(t_ours),
        "builtin_ms": statistics.median(t_builtin),
        "ratio": statistics.median(ratios),
        "ratio_q1": _quantile(ratios, 0.25),
        "ratio_q3": _quantile(ratios, 0.75),
    }
    if extra:
        row.update(extra)
    return row
