r"""What BatchNorm and SyncBatchNorm share: layouts, per-channel statistics, checks, running stats.

Every function here is bookkeeping around the book's formula (§6.3.1), which lives in
``batchnorm.py``; ``syncbatchnorm.py`` uses the same functions for its per-process part.

- **Layout.** A batch ``(N, C, *spatial)`` is read through a *channel view*: ``(M, C)`` when the
  channel is innermost in memory (2D input, channels_last, a transposed ``(N, L, C)``), else
  ``(N, C, S)``. Both are views of the input for the usual layouts, so no copy is made, and
  per-channel sums over them are fast on CPU (``sum((0, 2, 3))`` is not).
- **Statistics.** ``M = N * prod(spatial)`` values per channel. The mean is taken around a pivot
  (the first value of each channel), ``mu = x_0 + sum(x - x_0) / M``, and the variance in a second
  pass over centred values, ``var = sum((x - mu)**2) / M``: nothing cancels for a mean large
  against the spread, and a constant channel gets its value back exactly and variance 0, even
  near the top of its dtype's range (``sum(x) / M`` of a float32 channel of 1e30 overflows, and an
  inexact mean makes ``(x - mu)**2`` overflow). Both passes go a few rows at a time, so the
  centred chunk stays in cache, and write their chunks into one buffer per call.
- **dtype.** Float16/bfloat16 inputs are computed in float32 (statistics, running statistics,
  ``dx``), as the built-in does.
- **Checks.** The checks torch's ``batch_norm`` makes, in its words, plus the ones it lacks; the
  modules run all of them before any buffer moves (a refused input changes nothing).
- **Running statistics.** ``running <- (1 - f) running + f batch``, with ``f = momentum`` or, for
  ``momentum=None``, ``f = 1 / num_batches`` as a tensor (so ``torch.compile(fullgraph=True)``
  and ``torch.export`` need no data-dependent Python float). The new values are computed first
  and copied in after, so a failure (e.g. under ``torch.vmap``) leaves the buffers as they were.

No function here accumulates into a tensor in place or writes a tensor it did not create
(except :func:`update_running_stats`, into the buffers), so the Functions built on them work
under ``torch.vmap`` and batched gradients.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from torch_dlbasics.nn._autograd import transforms_active

CHUNK_ELEMENTS = 1 << 20
"""About 4 MB of float32: a centred chunk of rows stays in cache."""

VMAP_RUNNING_STATS_MESSAGE = (
    "Batch norm got a batched tensor as input while the running_mean or running_var, which will "
    "be updated in place, were not batched.\nIf you are using a module and do not need eval mode, "
    "please set `track_running_stats` to be False. If you are using a prebuilt module and do not "
    "need eval mode, please see the functorch website for resources on how to patch your module "
    "to work with vmap"
)
"""torch's words when ``torch.vmap`` meets a BatchNorm that would update its running statistics."""


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float32 for float16/bfloat16, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def values_per_channel(x: Tensor) -> int:
    """``M = N * prod(spatial)`` of a batch ``(N, C, *spatial)``."""
    return x.numel() // x.shape[1] if x.shape[1] > 0 else 0


def channel_innermost(x: Tensor) -> bool:
    """Whether the channel dimension 1 of ``x`` (3D or more) is the innermost one in memory.

    Read from the strides, which ``torch.vmap``'s batched tensors report (they do not answer
    ``is_contiguous(memory_format=...)``); it only picks the faster of two equivalent views.
    """
    return x.dim() >= 3 and x.shape[1] > 1 and x.stride(1) == 1


def channel_view(t: Tensor, channels_inner: bool) -> Tensor:
    """``t`` as ``(M, C)`` (2D input, or the channel innermost) or ``(N, C, S)``; a view of ``t``
    whenever ``t`` has that layout."""
    if t.dim() == 2:
        return t
    n, c, s = t.shape[0], t.shape[1], math.prod(t.shape[2:])
    if channels_inner:
        return t.movedim(1, -1).reshape(n * s, c)
    return t.reshape(n, c, s)


def channel_sum(v: Tensor) -> Tensor:
    """Per-channel sum ``(C,)`` of a :func:`channel_view`.

    ``(N, C, S)`` is summed over S, then over N: on CPU two single-dim reductions are about 1.6x
    faster than one ``sum((0, 2))`` (64x64x56x56 float32: 1.2 ms against 2.0 ms).
    """
    return v.sum(0) if v.dim() == 2 else v.sum(2).sum(0)


def per_channel(t: Tensor, v: Tensor) -> Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast against the channel view ``v``."""
    return t if v.dim() == 2 else t.view(1, -1, 1)


def broadcastable(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector ``(C,)`` shaped ``(C, 1, ...)`` to broadcast against ``x``."""
    return t.view((-1,) + (1,) * (x.dim() - 2))


def row_chunks(v: Tensor, elements: int = CHUNK_ELEMENTS) -> list[slice]:
    """Slices of ``v``'s rows, about ``elements`` values each (at least one row).

    Under ``torch.compile``, one slice of all rows: the compiler fuses the centring into the
    reduction itself, and a loop over a symbolic batch size breaks dynamo's tracing of the
    Function in torch 2.11 (dynamic shapes).
    """
    if torch.compiler.is_compiling() or v.shape[0] == 0:
        return [slice(None)]
    step = max(1, elements // max(1, math.prod(v.shape[1:])))
    return [slice(i, i + step) for i in range(0, v.shape[0], step)]


def chunk_scratch(v: Tensor, chunks: list[slice]) -> Optional[Tensor]:
    """One buffer for :func:`centred` chunks of ``v`` (the size of its largest chunk, as
    :func:`row_chunks` makes them), or None where each chunk is made fresh instead.

    A fresh chunk of a few MB page-faults in on most calls (the allocator hands such blocks back
    to the system when freed): at (64, 64, 56, 56) channels_last float32, the statistics took
    15,000 faults and 26 ms with a fresh chunk per slice, none and 8 ms with this buffer (2-core
    AMD EPYC VM, torch 2.14.1). None for one or two chunks (small batches, ``torch.compile``:
    the buffer would replace at most one allocation of its own size), a
    non-contiguous ``v`` (a fresh chunk keeps its strides, so the sums keep their order), with
    grad mode on and inside ``torch.func`` transforms (``out=`` is neither differentiable nor
    takes a batched tensor).
    """
    if len(chunks) < 3 or not v.is_contiguous() or torch.is_grad_enabled():
        return None  # (grad enabled: a double backward, where ``out=`` cannot be differentiated)
    if transforms_active():
        return None
    return v.new_empty((chunks[0].stop - chunks[0].start, *v.shape[1:]))


def centred(v: Tensor, rows: slice, centre: Tensor, scratch: Optional[Tensor]) -> Tensor:
    """``v[rows] - centre``, a temporary of ours: written into ``scratch`` when there is one (it
    is overwritten by the next chunk, so each chunk is used before the next is made)."""
    chunk = v[rows]
    if scratch is None:
        return chunk - centre
    return torch.sub(chunk, centre, out=scratch[: chunk.shape[0]])


def _chunked_sum(parts: list[Tensor]) -> Tensor:
    """Sum of per-chunk ``(C,)`` sums, without accumulating into a tensor in place (vmap)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def mean_var(xv: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a channel view ``xv`` (zeros for ``M = 0``).

    ``mu = x_0 + sum(x - x_0) / M`` around the pivot ``x_0`` (each channel's first value), then
    ``var = sum((x - mu)**2) / M``; see the module docstring for why.
    """
    m = xv.numel() // xv.shape[1] if xv.shape[1] > 0 else 0
    if m == 0:
        return xv.new_zeros(xv.shape[1]), xv.new_zeros(xv.shape[1])
    pivot = per_channel(xv[0] if xv.dim() == 2 else xv[0, :, 0], xv)
    # (smaller chunks for the pivot's pass, which only sums its chunk: they stay in L2)
    pivot_chunks, chunks = row_chunks(xv, 1 << 18), row_chunks(xv)
    scratch = chunk_scratch(xv, chunks)
    shift = _chunked_sum([channel_sum(centred(xv, r, pivot, scratch)) for r in pivot_chunks])
    mean = pivot.reshape(-1) + shift / m
    mean_b = per_channel(mean, xv)
    m2 = _chunked_sum([channel_sum(_square(centred(xv, r, mean_b, scratch))) for r in chunks])
    return mean, m2 / m


def dout_sums(dyv: Tensor, xv: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``sum(dout)`` and ``sum(dout * (x - mean))`` of channel views, in chunks.

    Centring before the product keeps ``sum(dout * xc)`` free of the cancellation that
    ``sum(dout * x) - mean * sum(dout)`` suffers for a large mean. Both sums of a chunk are
    taken before the next chunk, so its ``dout`` is still in cache for the product: one read
    of ``dout`` from memory instead of two, the same sums bit for bit (0.96-1.0x the time of
    two loops over the chunks at the report's BatchNorm shapes, float32; 2-core AMD EPYC VM,
    torch 2.14.1).
    """
    mean_b = per_channel(mean, xv)
    chunks = row_chunks(xv)
    scratch = chunk_scratch(xv, chunks)
    sums, sums_xc = [], []
    for rows in chunks:
        dy = dyv[rows]
        sums.append(channel_sum(dy))
        sums_xc.append(channel_sum(_mul(centred(xv, rows, mean_b, scratch), dy)))
    return _chunked_sum(sums), _chunked_sum(sums_xc)


def _mul(fresh: Tensor, other: Tensor) -> Tensor:
    """``fresh * other``, into ``fresh`` (a temporary of ours) when it can hold the product.

    It cannot under batched gradients (``is_grads_batched``, ``torch.func``), where ``other``
    is batched and ``fresh`` is not: torch.vmap then refuses the write (before writing
    anything), and the product is made out of place.
    """
    try:
        return fresh.mul_(other)
    except RuntimeError:
        return fresh * other


def _square(fresh: Tensor) -> Tensor:
    """``fresh**2`` into ``fresh`` (``mul_``: ``square_`` has no batching rule for torch.vmap)."""
    return fresh.mul_(fresh)


def affine(t: Tensor, scale: Tensor, shift: Tensor, channels_inner: bool) -> Tensor:
    """``t * scale + shift`` with per-channel ``scale`` and ``shift`` ``(C,)``, in ``t``'s shape
    and memory format: the elementwise pass of the forward and of ``dx``. ``channels_inner`` is
    :func:`channel_innermost` of the layer's input (the backward's ``dout`` may not be asked for
    its strides under dynamo on torch 2.4).

    One ``addcmul``, except on CPU with the channel outer (NCHW): there ``addcmul`` with two
    per-channel operands, constant along the rows it walks, leaves torch's vectorized loop (2.9x
    slower than a product then a sum at (8, 64, 28, 28) float32 in cache; 2-core AMD EPYC VM,
    torch 2.14.1), so a contiguous float32/float64 ``t`` goes through :func:`_plane_affine`, one
    vectorized pass. Both round once (a fused multiply-add): the same values in every layout and
    inside ``torch.func`` transforms (measured with torch 2.4.1 and 2.14.1 on that CPU).
    """
    if _plane_affine_applies(t, scale, shift, channels_inner):
        return _plane_affine(t, scale, shift)
    return torch.addcmul(broadcastable(shift, t), t, broadcastable(scale, t))


def _plane_affine_applies(t: Tensor, scale: Tensor, shift: Tensor, channels_inner: bool) -> bool:
    """Whether :func:`_plane_affine` computes this ``affine``: a plain contiguous float32/float64
    ``t`` on CPU with the channel outer (NCHW), ``scale``/``shift`` of its dtype, eager (no
    compiler, no ``torch.func`` transform) and nothing to differentiate through (a double
    backward records ``addcmul``)."""
    dtype = t.dtype
    return (
        type(t) is Tensor  # (not a subclass such as DTensor, which may lack the op)
        and t.device.type == "cpu"
        and t.dim() >= 3
        and not channels_inner
        and dtype in (torch.float32, torch.float64)
        and scale.dtype == dtype
        and shift.dtype == dtype
        and not torch.compiler.is_compiling()
        and not transforms_active()
        and not (
            torch.is_grad_enabled()
            and (t.requires_grad or scale.requires_grad or shift.requires_grad)
        )
        and t.is_contiguous()
    )


def _plane_affine(t: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``t * scale + shift`` per channel plane of a contiguous NCHW ``t``, in one pass: torch's
    inference batch-norm kernel given mean 0, variance 1 and eps 0, whose per-channel factors
    are then exactly ``scale / sqrt(1 + 0) = scale`` and ``shift - 0 * scale = shift``. Only the
    elementwise pass is borrowed: the statistics, ``scale`` and ``shift`` are ours."""
    zero, one = torch.zeros_like(scale), torch.ones_like(scale)
    return torch.batch_norm(t, scale, shift, zero, one, False, 0.0, 0.0, False)


def addcmul_fresh(fresh: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
    """``fresh + t1 * t2``, into ``fresh`` (a temporary of ours) outside ``torch.func``
    transforms; inside them out of place (``addcmul_`` has no batching rule, and its fallback
    loops over the batch with a warning)."""
    if transforms_active():
        return torch.addcmul(fresh, t1, t2)
    return fresh.addcmul_(t1, t2)


def momentum_factor(momentum: Optional[float], num_batches_tracked: Tensor) -> Union[float, Tensor]:
    """The weight ``f`` of this batch in the running statistics: ``momentum``, or for
    ``momentum=None`` (cumulative average) ``1 / (num_batches_tracked + 1)`` as a float64 tensor
    (the counter is read, not moved: it moves after the step succeeded)."""
    if momentum is not None:
        return momentum
    return torch.reciprocal(num_batches_tracked.double() + 1.0)


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    factor: Union[float, Tensor],
    count: int,
    *,
    unbiased: bool,
) -> None:
    """``running <- (1 - f) running + f batch`` for the mean and the variance (``unbiased``: the
    batch variance times ``count / (count - 1)``, torch's; else the biased one, the book's).

    ``count`` is the number of values per channel (``> 1`` in training, checked before); an empty
    batch (``count == 0``) leaves the buffers alone. The new values are computed first, then
    copied in (rounded to the buffers' dtype once): a failure leaves both buffers as they were.
    """
    if count == 0:
        return
    with torch.no_grad():
        batch_var = var * (count / (count - 1)) if unbiased else var
        # in the statistics' dtype (float32 for float16/bfloat16 buffers), rounded once
        if isinstance(factor, Tensor):
            factor = factor.to(mean.dtype)
        new_mean = torch.lerp(running_mean.to(mean.dtype), mean, factor)  # (1 - f) r + f m
        new_var = torch.lerp(running_var.to(var.dtype), batch_var, factor)
        try:
            running_mean.copy_(new_mean)
        except RuntimeError as e:  # batched statistics into unbatched buffers: nothing written
            if "vmap" not in str(e):
                raise
            raise RuntimeError(VMAP_RUNNING_STATS_MESSAGE) from e
        running_var.copy_(new_var)


def dtype_name(x: Tensor) -> str:
    """ATen's name of ``x``'s dtype as torch's messages print it (``Long``, ``Bool``, ``Half``)."""
    return x.type().rsplit(".", 1)[-1][: -len("Tensor")]


def check_floating(x: Tensor, op: str) -> None:
    """Torch's refusal of a non-floating input for ``op`` (``"batch_norm"``), in its words."""
    if not x.is_floating_point():
        raise NotImplementedError(f"\"{op}\" not implemented for '{dtype_name(x)}'")


def check_eps(eps: float, training: bool) -> None:
    """``eps > 0`` in training, ``eps >= 0`` in eval: torch's checks, in its words."""
    if training and not eps > 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check_batch_size(x: Tensor, size: torch.Size) -> None:
    """More than one value per channel of ``x`` in training (``size`` is what the message
    names: the caller's input, before the book's flatten)."""
    if values_per_channel(x) == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def check_buffers(
    running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool
) -> None:
    """Both running statistics or neither (training); both defined (eval): torch's words."""
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not training:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise RuntimeError(f"{name} must be defined in evaluation mode")


def check_channels(c: int, **tensors: Optional[Tensor]) -> None:
    """Each given per-channel tensor has ``c`` elements: torch's check, in its words."""
    for name, t in tensors.items():
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")
