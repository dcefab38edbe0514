"""One benchmark process: build the cases it is given, time them, write the raw results.

``python benchmarks/worker.py JOB.json OUT.json`` (run by ``run.py``, one fresh process per
case and pass in a full run). ``JOB.json`` holds ``{"cases": [...], "settings": {...},
"threads": N | null}``; ``OUT.json`` gets ``{"pid", "torch", "threads", "results": [...]}``,
rewritten after every case so that a crash keeps what was finished. Each result is
:func:`common.measure_pair`'s (or a memory case's ``values``) plus ``case``, ``status`` and
``reason``; a case whose side cannot run here is ``unsupported`` (our side raising
``TypeError``/``ValueError``/``NotImplementedError`` for an option that does not exist yet,
torch's side raising anything), any other error ``failed``; neither stops the process.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from common import (
    UNSUPPORTED_ERRORS,
    Settings,
    SideError,
    Unsupported,
    available_memory_bytes,
    measure_pair,
)


def _layout(case: dict[str, Any], device: str) -> tuple[bool, str | None]:
    """(interleaved, reason it cannot run): both sides alive at once when they fit."""
    need = case.get("bytes_needed") or 0
    free = available_memory_bytes(device)
    if not need or free is None or need <= 0.8 * free:
        return True, None
    if need / 2 <= 0.8 * free:
        return False, None
    return True, f"needs {need / 2**30:.1f} GiB with one side alive, {free / 2**30:.1f} GiB free"


def run_case(case: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Build and time (or measure) one case; never raises for a case's own errors."""
    base = {"case": case["case"], "pid": os.getpid(), "threads": torch.get_num_threads()}
    try:
        module = importlib.import_module(f"bench_{case['section']}")
        builder = getattr(module, case["builder"])
        interleaved, no_room = _layout(case, settings.device)
        if no_room:
            return {**base, "status": "unsupported", "reason": no_room}
        built = builder(device=settings.device, **case["params"])
        if case["kind"] == "memory":
            return {**base, "status": "ok", "reason": None, "values": built}
        repeats = case.get("repeats") or settings.repeats
        builtin_first = case.get("pass", 0) % 2 == 1  # alternate between processes
        out = measure_pair(
            built, settings, repeats, interleaved=interleaved, builtin_first=builtin_first
        )
        out["extra"] = built.extra
        return {**base, **out}
    except Unsupported as err:
        return {**base, "status": "unsupported", "reason": str(err)}
    except SideError as err:
        if err.which == "builtin" or isinstance(err.error, UNSUPPORTED_ERRORS):
            who = "torch" if err.which == "builtin" else "ours"
            return {
                **base,
                "status": "unsupported",
                "reason": f"{who}: {type(err.error).__name__}: {err.error}",
            }
        traceback.print_exc()
        return {**base, "status": "failed", "reason": str(err)}
    except Exception as err:
        traceback.print_exc()
        return {**base, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
    finally:
        gc.collect()


def _prime() -> None:
    """Pay the process's one-time costs (autograd's and torch.optim's lazy imports) before
    any case, so that they land in neither side's first call."""
    x = torch.ones(4, requires_grad=True)
    (x * 2).sum().backward()
    torch.optim.SGD([x], lr=0.1).step()


def main(job_path: str, out_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    settings = Settings(**job["settings"])
    if settings.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(settings.device))  # CUDA events on that card
    _prime()
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [],
    }
    target = Path(out_path)
    for case in job["cases"]:
        t0 = time.monotonic()
        result = run_case(case, settings)
        result["wall_s"] = round(time.monotonic() - t0, 3)
        out["results"].append(result)
        tmp = target.with_suffix(".part")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
