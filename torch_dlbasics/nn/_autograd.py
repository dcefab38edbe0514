"""What the layers' ``torch.autograd.Function`` s share: when a call needs one, and its cost.

- **When.** A Function records the backward (and, with ``jvp``, forward mode). A call with
  nothing to record — grad mode off or no input that requires grad, no forward-mode dual level
  open, no ``torch.func`` transform running — gets the same output from the Function's
  ``forward`` called directly, without the Function's per-call bookkeeping (eval and
  ``no_grad`` inference: BatchNorm1d (256, 1024) eval forward 95 µs through ``apply``, against
  torch's 45 µs, on a 2-core AMD EPYC VM with torch 2.14.1). :func:`records` decides.
- **Cost.** ``Function.apply`` of a Function with a ``setup_context`` binds its arguments to
  ``forward``'s signature on every call, with ``inspect.signature``, which rebuilds the
  signature each time unless the function carries one as ``__signature__`` (the standard
  protocol of :mod:`inspect`). :func:`signature_once` sets it, once, at class definition: the
  same signature, bound the same way (it took about a sixth of a small BatchNorm
  forward+backward under cProfile).
- **Transforms.** :func:`transforms_active`, the one test for a running ``torch.func``
  transform, which the layers' temporaries and random draws also ask.
"""

from __future__ import annotations

import inspect
from typing import Optional, TypeVar

import torch
from torch import Tensor
from torch.autograd import forward_ad

__all__ = ["records", "signature_once", "transforms_active"]

F = TypeVar("F", bound=type)


def signature_once(function: F) -> F:
    """Class decorator: ``function.forward`` carries its own signature (see the module
    docstring); the Function is otherwise unchanged."""
    forward = function.forward
    forward.__signature__ = inspect.signature(forward)  # type: ignore[attr-defined]
    return function


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp) is running: its wrapped tensors
    take no in-place or ``out=`` write of an unwrapped temporary, and a Function is needed to
    record through them (False while dynamo traces: it cannot trace the query on torch 2.4)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def records(*inputs: Optional[Tensor]) -> bool:
    """Whether a Function call on ``inputs`` has anything to record for autograd: grad mode on
    and an input that requires grad, a forward-mode dual level open (any tensor may carry a
    tangent) or a ``torch.func`` transform running (its wrapped tensors). While dynamo traces,
    only the first (it records the graph itself, and torch 2.4's dynamo cannot trace the other
    two queries)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return True
    if torch.compiler.is_compiling():
        return False
    if getattr(forward_ad, "_current_level", 0) >= 0:  # (a torch without it: always record)
        return True
    return transforms_active()
