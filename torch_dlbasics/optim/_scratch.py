"""Scratch buffers: the temporaries of a step (``out=s`` of the update functions), kept across steps.

A fresh tensor above glibc's mmap threshold (32 MB) is page-faulted in on every allocation; a
buffer kept from step to step is not (``benchmarks/bench_optim.py`` counts the faults). One flat
buffer per (device, dtype, slot), grown to the largest request; the views handed out are cached
per list of shapes, so a step makes no new tensors. The buffers are not optimizer state: not in
``state_dict``, dropped by pickling and deepcopy.

Only plain dense tensors get a buffer; the engine passes ``None`` (the update function then
allocates) where a shared buffer is wrong: ``differentiable=True`` (autograd must see fresh
tensors), tensor subclasses such as FSDP2's DTensor (a plain buffer breaks their ops), and under
``torch.compile`` (the compiler plans memory itself).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["reserve", "shape_views", "views"]

Key = tuple[torch.device, torch.dtype, int]

_MAX_CACHED_VIEW_LISTS = 64
"""Per buffer; the lists of shapes differ when the set of parameters with gradients varies."""


def _cache(optimizer: Optimizer) -> dict[Any, Any]:
    return optimizer.__dict__.setdefault("_scratch", {})


def reserve(optimizer: Optimizer, needs: dict[Key, int]) -> None:
    """Make each buffer ``key`` hold at least ``needs[key]`` elements (before any write of a
    step: an allocation that fails here leaves everything as it was)."""
    if not needs:  # (under torch.compile: no buffers, and no dict the tracer would have to see)
        return
    cache = _cache(optimizer)
    for key, n in needs.items():
        buf = cache.get(key)
        if buf is None or buf.numel() < n:
            device, dtype, _ = key
            cache[key] = torch.empty(n, dtype=dtype, device=device)
            cache.pop(("views", key), None)
            cache.pop(("shape views", key), None)


def views(optimizer: Optimizer, key: Key, like: list[Tensor]) -> list[Tensor]:
    """Contiguous views of buffer ``key`` (reserved this step) shaped like the tensors ``like``."""
    cache = _cache(optimizer)
    by_shapes: dict[tuple[torch.Size, ...], list[Tensor]] = cache.setdefault(("views", key), {})
    shapes = tuple(t.shape for t in like)
    out = by_shapes.get(shapes)
    if out is None:
        if len(by_shapes) >= _MAX_CACHED_VIEW_LISTS:
            by_shapes.clear()
        sizes = [s.numel() for s in shapes]
        chunks = cache[key][: sum(sizes)].split(sizes)
        out = by_shapes[shapes] = [c.view(s) for c, s in zip(chunks, shapes)]
    return out


def shape_views(optimizer: Optimizer, slot: int) -> Callable[[Tensor], Tensor]:
    """For the per-tensor path: ``view(t)``, a view of buffer (t's device, dtype, ``slot``)
    shaped like ``t``, cached per shape (one lookup per tensor and step)."""
    cache = _cache(optimizer)

    def view(t: Tensor) -> Tensor:
        key = (t.device, t.dtype, slot)
        by_shape = cache.setdefault(("shape views", key), {})
        out = by_shape.get(t.shape)
        if out is None:
            n = t.numel()
            out = by_shape[t.shape] = cache[key][:n].view(t.shape)
        return out

    return view
