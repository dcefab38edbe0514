"""The fused path (``fused=True``): the per-tensor update function under ``torch.compile``.

The same readable update function, traced for the parameters of a step with a gradient
(``fullgraph=True``: one graph per call, so a compile error raises before that call writes
anything); inductor then fuses each tensor's update into one loop (CPU: C++, CUDA: Triton).
Nothing of the maths is written twice.

Chunks: the parameters go to the compiled function :data:`CHUNK` at a time, in order, with
static shapes. Chunks of the same shapes, dtypes and states are the same graph, compiled once:
2000 parameters of one shape compile two graphs (a full chunk and the rest) instead of one
graph of 2000 updates, whose compile time grows with its size. A group of at most
:data:`CHUNK` parameters is one graph, as before. A step whose first chunk fails to compile
raises before anything is written; a later chunk that fails (after earlier chunks wrote) runs
the same update uncompiled, with a warning, so no step is left half done.

Recompiles: the learning rate and the step counts enter the graph as tensors, so an LR
scheduler does not recompile. Other hyperparameters are Python numbers baked into the graph:
changing one (a scheduler cycling ``momentum`` or ``betas``) recompiles, and so does a new set
of parameters with gradients. Past dynamo's recompile limit (raised to that limit times the
number of distinct chunks of a step) such a chunk runs the same update uncompiled (a warning
says so; nothing is written before the compiled call would have run). Each update function
has its own compile cache (its own code object), so the five optimizers do not share one
limit.

This room is the one to tune for speed; the tests compare it with the per-tensor path step by
step.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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

CHUNK = 64
"""Parameters per compiled call. Inductor's compile time grows with the number of updates in a
graph (cold, on this 2-core AMD EPYC with torch 2.14.1: 19 s for resnet18's 62 tensors, 227 s
for 2000 tensors of 1000 elements); chunks of repeated shapes reuse one graph. resnet18's
parameter set stays one graph."""

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
    """The compiled update of every parameter of the group, :data:`CHUNK` per call; parameter
    ``i`` takes the keyword arguments ``kwargs[which[i]]`` (state that existed, state created
    this step; one dict where they are the same, so the first step runs the later steps'
    graph)."""
    is_step = [key == "step" for key in state_args]
    compiled, plain = _compiled(update)
    starts = range(0, len(params), CHUNK)
    with _recompile_limit_for(len(starts)):
        for start in starts:
            end = start + CHUNK
            columns = [
                None if key is None else [state[key] for state in states[start:end]]
                for key in state_args
            ]
            args = (params[start:end], grads[start:end], columns, is_step, n_scratch, kwargs)
            args += (which[start:end],)
            try:
                compiled(*args)
            except Exception as err:  # nothing of this chunk ran: fullgraph=True traces first
                if not (_recompile_limit(err) or start > 0):
                    raise  # nothing of the step was written
                _warn_once(update, err)
                plain(*args)


def _warn_once(update: Callable[..., None], err: Exception) -> None:
    if update in _WARNED:
        return
    _WARNED.add(update)
    if _recompile_limit(err):
        why = (
            "torch.compile reached its recompile limit (many different sets of parameters "
            "with gradients, or changing hyperparameters other than lr)"
        )
    else:
        why = f"a chunk of parameters failed to compile after earlier chunks were updated ({err})"
    warnings.warn(
        f"fused=True ({update.__name__}): {why}; such steps run the same update uncompiled",
        stacklevel=5,
    )


@contextmanager
def _recompile_limit_for(chunks: int) -> Iterator[None]:
    """dynamo's recompile limit times ``chunks``: every distinct chunk is one cache entry of
    the one compiled function."""
    from torch._dynamo import config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if chunks <= 1:
        yield
        return
    with config.patch(**{name: getattr(config, name) * chunks}):
        yield


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
        # Static shapes: chunks of other shapes are other graphs, not one dynamic graph.
        compiled = torch.compile(
            apply, fullgraph=True, dynamic=False, backend=BACKEND, options=options
        )
        fn = compiled, apply
        _COMPILED[update, BACKEND] = fn
    return fn
