r"""Batch Normalization (Ioffe & Szegedy, 2015) with a hand-written backward.

Forward, per channel ``c`` over the ``M = N * prod(spatial)`` values of a batch:

.. math::
    \mu = \frac{1}{M}\sum_i x_i, \qquad
    \sigma^2 = \frac{1}{M}\sum_i (x_i - \mu)^2, \qquad
    \hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    y_i = \gamma \hat x_i + \beta

Backward, the book's chain (``dbeta, dgamma, dxn, dstd, dvar, dxc, dmu``) folded per channel so
that it reads the data twice (one reduction pass for ``sum(dout)`` and ``sum(dout * x)``, one
elementwise pass for ``dx = k * dout + a * x + c``):

.. math::
    d\beta = \sum_i dy_i, \quad d\gamma = \sum_i dy_i \hat x_i, \quad
    dx_i = \frac{\gamma}{\sigma}\Big(dy_i - \frac{d\beta}{M} - \hat x_i \frac{d\gamma}{M}\Big)

Equivalent torch call: ``torch.nn.BatchNorm1d/2d/3d`` with the same arguments (``book=False``):
same parameters, buffers and ``state_dict`` keys, biased variance to normalise and unbiased
variance in ``running_var``, ``momentum=None`` for a cumulative average. Outputs, gradients and
buffers agree with the built-in to rounding.

Differences from the book's ``BatchNormalization`` (``book=True`` restores the ones that change
numbers; ``eps`` and ``momentum`` are plain arguments):

- eps: the book adds ``10e-7`` (= 1e-6); torch's default is 1e-5. Pass ``eps=1e-6``.
- momentum: the book's ``momentum=0.9`` weights the *old* running value; torch's ``momentum``
  weights the *new* batch value, so the book's 0.9 is ``momentum=0.1`` here.
- ``book=True``: ``running_var`` starts at 0 (torch: 1) and is updated with the *biased* batch
  variance (torch: unbiased, ``M / (M - 1)`` times larger).
- ``book=True``: conv inputs get per-activation statistics: the input is flattened to
  ``(N, C*H*W)`` as the book does, so ``num_features`` must be ``C*H*W`` and the module equals
  ``BatchNorm1d(C*H*W)`` applied to ``x.flatten(1)``. torch (``book=False``) uses one statistic
  per channel, shared over the spatial positions.

Implementation notes: statistics are taken over an ``(N, C, S)`` view (spatial innermost) or
an ``(M, C)`` matrix (2D input, or channels_last: channel innermost), not with ``var_mean`` over
dims ``(0, 2, 3)`` (slow on CPU): a first pass sums, a second sums ``(x - mean)**2`` a few rows
at a time so the centred chunk stays in cache. Two centred passes, as torch's kernels make, so
a mean large against the spread loses no precision. Float16/bfloat16 inputs are computed in
float32 (statistics, ``running_*`` updates and ``dx``), as the built-in. Only the input,
``weight`` and the per-channel mean and inverse standard deviation are saved for backward (no
normalised copy). For double backward (``create_graph=True``) the backward recomputes the batch
statistics from the input with differentiable ops, so that gradients of gradients see their
dependence on the input.

Example::

    >>> import torch
    >>> from torch_dlbasics.nn import BatchNorm2d
    >>> bn = BatchNorm2d(3)
    >>> y = bn(torch.randn(4, 3, 5, 5))
    >>> y.shape, int(bn.num_batches_tracked)
    (torch.Size([4, 3, 5, 5]), 1)
    >>> ref = torch.nn.BatchNorm2d(3)
    >>> ref.load_state_dict(bn.state_dict())
    <All keys matched successfully>
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "_BatchNorm", "batch_norm"]


_CHUNK_ELEMENTS = 1 << 20  # about 4 MB of float32: a centred chunk stays in cache


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of float16/bfloat16 inputs are kept in float32, as the built-in does."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _is_channels_last(x: Tensor) -> bool:
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return False


def _channel_view(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` as a matrix ``(M, C)`` (2D input, or channels_last: channel innermost) or as
    ``(N, C, S)`` (spatial innermost), without a copy when ``t`` already has that layout."""
    if t.dim() == 2:
        return t
    n, c, spatial = t.shape[0], t.shape[1], math.prod(t.shape[2:])
    if channels_last:
        return t.movedim(1, -1).reshape(n * spatial, c)
    return t.reshape(n, c, spatial)


def _reduce_dims(v: Tensor) -> tuple[int, ...]:
    """The dims of a :func:`_channel_view` that hold one channel's values."""
    return (0,) if v.dim() == 2 else (0, 2)


def _channel_sum(v: Tensor) -> Tensor:
    """Per-channel sum ``(C,)`` of a :func:`_channel_view`.

    ``(N, C, S)`` is summed over S, then over N: on CPU two single-dim reductions are about
    1.6x faster than one ``sum((0, 2))`` (64x64x56x56 float32: 1.2 ms against 2.0 ms).
    """
    return v.sum(0) if v.dim() == 2 else v.sum(2).sum(0)


def _per_channel(t: Tensor, v: Tensor) -> Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast against the view ``v``."""
    return t if v.dim() == 2 else t.view(1, -1, 1)


def _broadcastable(t: Tensor, x: Tensor) -> Tensor:
    """Shape a per-channel vector ``(C,)`` as ``(C, 1, ...)`` to broadcast against ``x``."""
    return t.view((-1,) + (1,) * (x.dim() - 2))


def _row_chunks(v: Tensor) -> list[slice]:
    """Slices of ``v``'s rows, about ``_CHUNK_ELEMENTS`` values each (at least one row).

    Under ``torch.compile``, one slice of all rows: the compiler fuses the centring into the
    reduction itself, and a loop over a symbolic batch size breaks dynamo's tracing of the
    Function in torch 2.11 (dynamic shapes).
    """
    if torch.compiler.is_compiling():
        return [slice(None)]
    step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(v.shape[1:])))
    return [slice(i, i + step) for i in range(0, v.shape[0], step)]


def _batch_stats(xv: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a :func:`_channel_view`, in two passes.

    The first pass sums; the second sums ``(x - mean)**2`` a few rows at a time, so the
    centred chunk stays in cache instead of costing a full-size temporary. Every square is
    centred, so nothing cancels when the mean is large against the spread (``sum(x**2) / M -
    mean**2`` would).
    """
    c = xv.shape[1]
    m = xv.numel() // c
    if m == 0:
        zeros = xv.new_zeros(c)
        return zeros, zeros.clone()
    mean = _channel_sum(xv) / m
    mean_b = _per_channel(mean, xv)
    m2 = xv.new_zeros(c)
    for rows in _row_chunks(xv):
        m2 += _channel_sum((xv[rows] - mean_b).square_())
    return mean, m2 / m


def _dy_sums(dyv: Tensor, xv: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))``, a few rows at a time (cache).

    Centring before the product keeps ``sum(dy * xc)`` free of the cancellation that
    ``sum(dy * x) - mean * sum(dy)`` suffers for a large mean.
    """
    mean_b = _per_channel(mean, xv)
    dbeta, dout_xc = mean.new_zeros(mean.shape), mean.new_zeros(mean.shape)
    for rows in _row_chunks(xv):
        dyc = dyv[rows]
        dbeta += _channel_sum(dyc)
        dout_xc += _channel_sum((xv[rows] - mean_b).mul_(dyc))
    return dbeta, dout_xc


class _BatchNormFunction(torch.autograd.Function):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel; outputs ``(y, mean, var)``
    where ``mean, var`` are the statistics used (batch or running), not differentiable."""

    @staticmethod
    def forward(
        x: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        running_mean: Optional[Tensor],
        running_var: Optional[Tensor],
        training: bool,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        acc = _accumulate_dtype(x.dtype)
        xa = x if x.dtype == acc else x.to(acc)
        if training:
            cl = _is_channels_last(x)
            mean, var = _batch_stats(_channel_view(xa, cl))
        else:
            mean = running_mean.to(acc, copy=True)  # type: ignore[union-attr]
            var = running_var.to(acc, copy=True)  # type: ignore[union-attr]
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(acc)
        shift = (
            -mean * scale if bias is None else torch.addcmul(bias.to(acc), mean, scale, value=-1)
        )
        # One elementwise pass in x's own shape and memory format (the output is not a view).
        y = torch.addcmul(_broadcastable(shift, x), xa, _broadcastable(scale, x))
        # No ``.to`` when the dtype already fits: torch 2.11's dynamo then hands the backward a
        # zero ``dout`` under torch.compile (seen with torch 2.11.0; 2.4.1 and 2.14.1 are fine).
        return (y if y.dtype == x.dtype else y.to(x.dtype)), mean, var

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, _bias, _running_mean, _running_var, training, eps = inputs
        _y, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.training = training
        ctx.eps = eps
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))

    @staticmethod
    def backward(
        ctx: Any, dout: Tensor, _dmean: Optional[Tensor], _dvar: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        acc = _accumulate_dtype(x.dtype)
        xa = x if x.dtype == acc else x.to(acc)
        dy = dout if dout.dtype == acc else dout.to(acc)
        cl = _is_channels_last(x)
        xv, dyv = _channel_view(xa, cl), _channel_view(dy, cl)
        dims = _reduce_dims(xv)
        m = x.numel() // x.shape[1]
        inv_m = 1.0 / m if m > 0 else 0.0  # an empty batch has an empty dx
        if ctx.training and torch.is_grad_enabled() and m > 0:
            # Double backward: mean and std are functions of x, so recompute them on the graph.
            var, mean = torch.var_mean(xv, dims, correction=0)
            invstd = torch.rsqrt(var + ctx.eps)
        gamma = torch.ones_like(invstd) if weight is None else weight.to(acc)

        dbeta, dout_xc = _dy_sums(dyv, xv, mean)  # sum(dout), sum(dout * xc)
        dgamma = dout_xc * invstd  # sum(dout * xn)
        dx = None
        if ctx.needs_input_grad[0]:
            k = gamma * invstd  # dxn = gamma * dout;  dxc = dxn / std  (+ the dvar term)
            if ctx.training:
                dstd = -gamma * dgamma * invstd  # -sum(dxn * xc) / std**2
                dvar = 0.5 * dstd * invstd  # 0.5 * dstd / std
                dxc_x = 2.0 * inv_m * dvar  # dxc += (2 / M) * xc * dvar
                dmu = k * dbeta  # sum(dxc), as sum(xc) = 0
                c = -(dxc_x * mean + dmu * inv_m)  # dx = dxc - dmu / M
                dx = torch.addcmul(_broadcastable(c, x), dy, _broadcastable(k, x))
                dx = dx.addcmul_(xa, _broadcastable(dxc_x, x))
            else:
                dx = dy * _broadcastable(k, x)
            dx = dx.to(x.dtype)
        dweight = dgamma.to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = (
            dbeta.to(weight.dtype if weight is not None else acc)
            if ctx.needs_input_grad[2]
            else None
        )
        return dx, dweight, dbias, None, None, None, None


def _verify_batch_size(size: torch.Size) -> None:
    size_prods = size[0]
    for s in size[2:]:
        size_prods *= s
    if size_prods == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    book: bool = False,
) -> Tensor:
    r"""Batch normalization, ``torch.nn.functional.batch_norm``'s semantics (``book=False``).

    In training the batch statistics normalise the input and, when given, ``running_mean`` and
    ``running_var`` are updated in place under ``no_grad`` (``(1 - momentum) * running +
    momentum * batch``, unbiased variance). ``book=True`` flattens inputs of more than 2 dims to
    ``(N, -1)`` (per-activation statistics) and stores the biased variance, as the book does.

    Example::

        >>> import torch
        >>> from torch_dlbasics.nn.functional import batch_norm
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        >>> y = batch_norm(x, rm, rv, training=True)
        >>> ref = torch.nn.functional.batch_norm(x, torch.zeros_like(rm), torch.ones_like(rv), training=True)
        >>> torch.allclose(y, ref)
        True
    """
    if training:
        _verify_batch_size(input.size())
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("running_mean must be defined in evaluation mode")
    if input.dim() < 2:
        raise ValueError(f"expected 2D or more input (got {input.dim()}D input)")
    x = input.flatten(1) if book and input.dim() > 2 else input
    c = x.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")

    y, mean, var = _BatchNormFunction.apply(
        x, weight, bias, running_mean, running_var, training, eps
    )
    m = x.numel() // c
    if training and running_mean is not None and running_var is not None and m > 0:
        with torch.no_grad():
            running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            batch_var = var if book else var * (m / (m - 1))
            running_var.mul_(1.0 - momentum).add_(batch_var.to(running_var.dtype), alpha=momentum)
    return y.view(input.shape) if x is not input else y


class _BatchNorm(nn.Module):
    """Base of BatchNorm1d/2d/3d: torch's constructor, parameters and buffers; see the module
    docstring for the formula, the torch equivalent and the book's form (``book=True``)."""

    _version = 2
    __constants__: ClassVar[list[str]] = [
        "track_running_stats",
        "momentum",
        "eps",
        "num_features",
        "affine",
        "book",
    ]
    num_features: int
    eps: float
    momentum: Optional[float]
    affine: bool
    track_running_stats: bool
    book: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        book: bool = False,
    ) -> None:
        if eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.book = book
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))
            self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, device=device),
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()  # type: ignore[union-attr]
            if self.book:
                self.running_var.zero_()  # type: ignore[union-attr]
            else:
                self.running_var.fill_(1)  # type: ignore[union-attr]
            self.num_batches_tracked.zero_()  # type: ignore[union-attr]

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = (
            "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
            "track_running_stats={track_running_stats}"
        ).format(**self.__dict__)
        return s + (", book=True" if self.book else "")

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            # Checkpoints from before num_batches_tracked existed (torch's rule).
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None
                    and self.num_batches_tracked.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics in training, and in eval when there are no running statistics.
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
            book=self.book,
        )


class BatchNorm1d(_BatchNorm):
    """BatchNorm over ``(N, C)`` or ``(N, C, L)`` input; ``torch.nn.BatchNorm1d``'s equivalent."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    """BatchNorm over ``(N, C, H, W)`` input; ``torch.nn.BatchNorm2d``'s equivalent."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm):
    """BatchNorm over ``(N, C, D, H, W)`` input; ``torch.nn.BatchNorm3d``'s equivalent."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
