"""What every experiment writes: ``<out>/<name>.json`` (with the machine it ran on) and its figures,
and the statistics over seeds that the tables quote (median and range, never one draw).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIGNIFICANT = 7  # digits kept in the JSON: float32 carries about 7


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one number over seeds (and how many seeds)."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "seeds": len(v),
    }


def curve_spread(curves: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Pointwise median, min and max of equally long curves (one per seed)."""
    a = np.asarray(curves, dtype=np.float64)
    return {
        "median": np.median(a, 0).tolist(),
        "min": a.min(0).tolist(),
        "max": a.max(0).tolist(),
    }


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _clean(obj: Any, where: str = "$") -> Any:
    """Finite numbers only, floats to :data:`SIGNIFICANT` digits, tuples as lists."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite number at {where}: {obj}")
        return float(f"{obj:.{SIGNIFICANT}g}")
    if isinstance(obj, dict):
        return {str(k): _clean(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def write_results(
    out: Path,
    name: str,
    results: dict[str, Any],
    figures: Any,
    started: float,
    argv: list[str],
) -> Path:
    """Save ``<out>/<name>.json`` and the figures (one, or a dict ``{suffix: figure}`` saved as
    ``<name><suffix>.png``); print where. Returns the JSON's path."""
    import matplotlib.pyplot as plt

    results = _clean(
        {
            "command": " ".join(["python", f"examples/{name}.py", *argv]),
            **results,
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine(),
        }
    )
    figs = figures if isinstance(figures, dict) else {"": figures}
    written = []
    for suffix, fig in figs.items():
        png = out / f"{name}{suffix}.png"
        fig.savefig(png, dpi=80)
        plt.close(fig)
        written.append(png)
    js = out / f"{name}.json"
    tmp = js.with_name(js.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    tmp.replace(js)
    print(f"wrote {', '.join(map(str, written))} and {js}")
    return js
