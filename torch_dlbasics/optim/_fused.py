"""The fused path (``fused=True``): the per-tensor update function under ``torch.compile``.

The same readable update function, traced once for all parameters of a step with a gradient
(``fullgraph=True``: one graph, so a compile error raises before anything is written); inductor
then fuses each tensor's update into one loop (CPU: C++, CUDA: Triton). Nothing of the maths is
written twice.

Recompiles: the learning rate and the step counts enter the graph as tensors, so an LR
scheduler does not recompile. Other hyperparameters are Python numbers baked into the graph:
changing one (a scheduler cycling ``momentum`` or ``betas``) recompiles, and so does a new set
of parameters with gradients. Past dynamo's recompile limit such a step runs the same update
uncompiled (a warning says so; nothing is written before the compiled call would have run).
Each update function has its own compile cache (its own code object), so the five optimizers
do not share one limit.

This room is the one to tune for speed; the tests compare it with the per-tensor path step by
step.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["DEVICES", "check_available", "run", "scalars"]

DEVICES = ("cpu", "cuda")
"""Devices with an inductor backend here: C++ on CPU, Triton on CUDA."""

BACKEND = "inductor"
"""The ``torch.compile`` backend (tests also use ``"eager"``: dynamo's graph run op by op,
bit-identical to the per-tensor path, without inductor's compile time)."""

INDUCTOR_OPTIONS = {"realize_opcount_threshold": 4}
"""Compute a chain of more than 4 ops once, into a buffer, instead of inlining it into every loop
that reads it. Inductor inlines such chains up to 30 ops by default, which puts Adam's bias
correction (``lr_t``: two ``pow``, a ``sqrt``, a divide, all on the 0-dim step count) inside the
per-element loop, recomputed for every vector: 2.0-2.9x torch's ``fused=True`` Adam/AdamW on one
10M-element float32 tensor, against 1.03-1.16x with this threshold (this 2-core AMD EPYC, torch
2.14.1, 2 threads). The other optimizers' updates have no such chain and time the same either way."""

_AVAILABLE: set[str] = set()
_COMPILED: dict[tuple[Callable[..., None], str], tuple[Callable[..., None], ...]] = {}
_WARNED: set[Callable[..., None]] = set()


def check_available(device: torch.device) -> None:
    """Raise ``RuntimeError`` unless inductor can compile for ``device`` (checked once)."""
    kind = device.type
    if kind in _AVAILABLE or kind not in DEVICES or BACKEND != "inductor":
        return  # other devices are refused with torch's fused message by the engine
    if kind == "cpu":
        found, what = _cxx() is not None, "a C++ compiler (g++ or clang++, or set CXX)"
    else:
        from torch.utils._triton import has_triton

        found, what = has_triton(), "Triton"
    if not found:
        raise RuntimeError(
            f"fused=True compiles the update with torch.compile (inductor), which needs {what} "
            f"for {kind} tensors, and none was found; use fused=None (the default paths) or "
            "install it"
        )
    _AVAILABLE.add(kind)


def _cxx() -> Optional[str]:
    names = [os.environ.get("CXX")]
    try:
        from torch._inductor import config

        names += [c for c in config.cpp.cxx if isinstance(c, str)]
    except Exception:  # pragma: no cover - an inductor without this setting
        pass
    for name in [*names, "g++", "c++", "clang++"]:
        if name and shutil.which(name):
            return name
    return None


def scalars(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The learning rate as a 0-dim tensor (a new value does not recompile); other tensor
    hyperparameters (betas) as numbers, as on the eager paths (dynamo of torch 2.4 cannot
    trace them as tensors in ``addcmul_``'s value or ``lerp_``'s weight)."""
    out = {k: v.item() if isinstance(v, Tensor) and k != "lr" else v for k, v in kwargs.items()}
    lr = out.get("lr")
    if isinstance(lr, Tensor):
        out["lr"] = lr.reshape(())
    elif lr is not None:
        out["lr"] = torch.tensor(float(lr), dtype=torch.float64)
    return out


def run(
    update: Callable[..., None],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    state_args: tuple[Optional[str], ...],
    n_scratch: int,
    kwargs: list[dict[str, Any]],
    which: list[int],
) -> None:
    """One compiled call updating every parameter of the group; parameter ``i`` takes the
    keyword arguments ``kwargs[which[i]]`` (state that existed, state created this step)."""
    columns = [None if key is None else [state[key] for state in states] for key in state_args]
    is_step = [key == "step" for key in state_args]
    args = (params, grads, columns, is_step, n_scratch, kwargs, which)
    compiled, plain = _compiled(update)
    try:
        compiled(*args)
    except Exception as err:  # nothing ran: fullgraph=True traces the whole call first
        if not _recompile_limit(err):
            raise
        if update not in _WARNED:
            _WARNED.add(update)
            warnings.warn(
                f"fused=True ({update.__name__}): torch.compile reached its recompile limit "
                "(many different sets of parameters with gradients, or changing "
                "hyperparameters other than lr); such steps run the same update uncompiled",
                stacklevel=4,
            )
        plain(*args)


def _recompile_limit(err: Exception) -> bool:
    """dynamo's 'too many recompiles' under fullgraph=True (its type differs across versions)."""
    name = type(err).__name__
    if name in ("FailOnRecompileLimitHit", "RecompileLimitExceeded", "CacheLimitExceeded"):
        return True
    text = str(err).lower()
    return name == "Unsupported" and ("recompile limit" in text or "cache_size_limit" in text)


def _compiled(update: Callable[..., None]) -> tuple[Callable[..., None], Callable[..., None]]:
    fn = _COMPILED.get((update, BACKEND))
    if fn is None:
        from ._step import StepCount

        def apply(
            params: list[Tensor],
            grads: list[Tensor],
            columns: list[Optional[list[Tensor]]],
            is_step: list[bool],
            n_scratch: int,
            kwargs: list[dict[str, Any]],
            which: list[int],
        ) -> None:
            for i in range(len(params)):
                state = [
                    None if c is None else StepCount([c[i]]) if step else c[i]
                    for c, step in zip(columns, is_step)
                ]
                update(params[i], grads[i], *state, *([None] * n_scratch), **kwargs[which[i]])

        # A code object of its own: dynamo keeps its compile cache per code object.
        apply.__code__ = apply.__code__.replace(co_name=f"fused_{update.__name__}")
        options = INDUCTOR_OPTIONS if BACKEND == "inductor" else None
        fn = torch.compile(apply, fullgraph=True, backend=BACKEND, options=options), apply
        _COMPILED[update, BACKEND] = fn
    return fn
