"""Checkpoints that resume bit for bit, and refuse what they cannot resume from.

A checkpoint is one ``torch.save`` dict: ``run`` (the settings it was made with), ``model``,
``optimizer``, ``scheduler`` state dicts, ``progress`` (epoch, step within it, ...),
``losses`` and ``rng`` (every RNG the run touches, in types ``torch.load(weights_only=True)``
accepts). :func:`save` writes to a temporary name and renames, so a crash (or Ctrl-C) never
leaves half a checkpoint. :func:`load` and :func:`restore` refuse, in one line, a file that is
not such a checkpoint: a truncated file, a bare tensor, a model ``state_dict``, another run's
settings, an optimizer state that does not fit the optimizer.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _cli import ExampleError
from torch import nn

PARTS = ("run", "model", "optimizer", "scheduler", "progress", "losses", "rng")
PROGRESS = ("epoch", "step_in_epoch", "global_step", "images", "train_seconds")


def rng_state() -> dict[str, Any]:
    """torch's, numpy's and Python's global RNG states (and CUDA's where there is one)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "key": key.tolist(),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, **parts: Any) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(parts, tmp)
    tmp.replace(path)


def _what(obj: Any) -> str:
    """What a file holds, in a few words, for the error message."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, dict):
        if {"state", "param_groups"} <= obj.keys():
            return "an optimizer state_dict"
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return "a model state_dict"
        keys = sorted(map(str, obj))
        return f"a dict with keys {keys[:6]}{' ...' if len(keys) > 6 else ''}"
    return f"a {type(obj).__name__}"


def load(path: Path, flag: str = "--resume") -> dict[str, Any]:
    """Read a checkpoint (CPU tensors, ``weights_only``); refuse anything else in one line."""
    if not path.is_file():
        raise ExampleError(f"{flag}: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: say so, do not guess
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
        raise ExampleError(f"{flag}: cannot read {path}: {type(e).__name__}: {first}") from None
    missing = [k for k in PARTS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ExampleError(
            f"{flag}: {path} is not a checkpoint of this example ({_what(ckpt)}; missing {', '.join(missing)})"
        )
    progress = ckpt["progress"]
    if not (
        isinstance(progress, dict)
        and all(isinstance(progress.get(k), (int, float)) for k in PROGRESS)
        and isinstance(ckpt["run"], dict)
        and isinstance(ckpt["losses"], list)
    ):
        raise ExampleError(f"{flag}: {path} has a malformed run, progress or loss record")
    return ckpt


def check_run(
    ckpt: dict[str, Any], run: dict[str, Any], path: Path, flag: str = "--resume"
) -> None:
    """The checkpoint must come from a run with the same settings (else resuming is not exact)."""
    if ckpt["run"] != run:
        diff = {k: (ckpt["run"].get(k), v) for k, v in run.items() if ckpt["run"].get(k) != v}
        raise ExampleError(f"{flag}: {path} was made with other settings (saved, now): {diff}")


def restore(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    flag: str = "--resume",
) -> None:
    """Load model, optimizer, scheduler and RNG states; a part that does not fit is refused."""
    part = "model"
    try:
        model.load_state_dict(ckpt["model"])
        part = "optimizer"
        optimizer.load_state_dict(ckpt["optimizer"])  # ours refuses another class's state
        part = "scheduler"
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        part = "rng"
        set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExampleError(f"{flag}: {path}: its {part} state does not fit: {first}") from None
