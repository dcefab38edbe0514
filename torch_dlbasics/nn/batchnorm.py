r"""Batch Normalization (§6.3.1, Ioffe & Szegedy 2015) with a hand-written backward.

Forward, per channel over the ``M = N * prod(spatial)`` values of a batch (the book's
``BatchNormalization.__forward``):

.. math::
    \mu = \frac{1}{M}\sum_i x_i, \quad x_c = x - \mu, \quad
    \sigma^2 = \frac{1}{M}\sum_i x_{c,i}^2, \quad \mathrm{std} = \sqrt{\sigma^2 + \epsilon}, \quad
    x_n = \frac{x_c}{\mathrm{std}}, \quad y = \gamma x_n + \beta

and in evaluation (§6.3.2) ``running_mean`` and ``running_var`` take the place of ``mu`` and
``var``. The output is computed elementwise as ``y = x * scale + shift`` with the
per-channel ``scale = gamma / std`` and ``shift = beta - mu * scale`` (as torch's kernels do).

Backward: the book's ``BatchNormalization.__backward``, line for line,

.. code-block:: python

    dbeta = dout.sum(axis=0)
    dgamma = np.sum(xn * dout, axis=0)
    dxn = gamma * dout
    dxc = dxn / std
    dstd = -np.sum((dxn * xc) / (std * std), axis=0)
    dvar = 0.5 * dstd / std
    dxc += (2.0 / M) * xc * dvar
    dmu = np.sum(dxc, axis=0)
    dx = dxc - dmu / M

:func:`_dx` keeps these names. Only ``dout``, ``xc`` and ``dx`` are full-size; every other
quantity is a per-channel vector once the two sums are known, ``dbeta = sum(dout)`` and
``sum(dout * xc)`` (one reading pass, :func:`~torch_dlbasics.nn._batch_stats.dout_sums`):

.. math::
    d\gamma = \frac{\sum dout \cdot x_c}{\mathrm{std}}, \quad
    d\mathrm{std} = -\frac{\gamma\, d\gamma}{\mathrm{std}}, \quad
    d\mathrm{var} = \frac{d\mathrm{std}}{2\,\mathrm{std}}, \quad
    d\mu = \sum dxc = \frac{\gamma\, d\beta}{\mathrm{std}}\ \ (\textstyle\sum x_c = 0)

    dx = \underbrace{\frac{\gamma}{\mathrm{std}}}_{dxc/dout} dout
       + \underbrace{\frac{2\, d\mathrm{var}}{M}}_{dxc/x_c} x_c - \frac{d\mu}{M}

so ``dx`` takes one more elementwise pass over ``dout`` and ``x``, and no ``xn``, ``dxn`` or
``dxc`` is ever stored: the folding changes the order of the sums, not the result. In eval the
statistics are constants: ``dx = dxc = gamma * dout / std``.

Equivalent torch call: ``torch.nn.BatchNorm1d/2d/3d`` with the same arguments (``book=False``):
our classes *are* torch's classes (subclasses), with the same parameters, buffers,
``state_dict`` keys and methods, whose forward and backward are the Function below. Biased
variance to normalise, unbiased in ``running_var``, ``momentum=None`` for a cumulative average.
Outputs, gradients and buffers agree with the built-in to rounding.

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

Implementation notes: float16/bfloat16 inputs are computed in float32; only the input,
``weight`` and the per-channel mean and inverse standard deviation are saved for backward (no
normalised copy); for double backward (``create_graph=True``) the backward recomputes the batch
statistics from the input with differentiable ops. A call with nothing to differentiate (eval
or ``no_grad``, no forward-mode dual level, no ``torch.func`` transform) runs the Function's
``forward`` directly, without ``Function.apply``'s bookkeeping (``_autograd.py``). The layout,
statistics, checks and the running-statistics update are shared with SyncBatchNorm
(``_batch_stats.py``). The Function has a ``jvp`` (forward mode, ``torch.func.jacfwd``) and
``generate_vmap_rule`` (``torch.vmap``, batched gradients); ``torch.jit.script`` is refused
with a pointer to ``torch.compile`` / ``torch.export``.

Example::

    >>> import torch
    >>> from torch_dlbasics.nn import BatchNorm2d
    >>> bn = BatchNorm2d(3)
    >>> y = bn(torch.randn(4, 3, 5, 5))
    >>> y.shape, int(bn.num_batches_tracked)
    (torch.Size([4, 3, 5, 5]), 1)
    >>> isinstance(bn, torch.nn.BatchNorm2d)
    True
    >>> ref = torch.nn.BatchNorm2d(3)
    >>> ref.load_state_dict(bn.state_dict())
    <All keys matched successfully>
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.overrides import (
    handle_torch_function,
    has_torch_function_unary,
    has_torch_function_variadic,
)

from torch_dlbasics.nn import _batch_stats as bs
from torch_dlbasics.nn._autograd import records, signature_once

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm"]

_TORCH_HAS_BIAS_FLAG = (
    "bias" in inspect.signature(nn.modules.batchnorm._NormBase.__init__).parameters
)
"""torch >= 2.5's BatchNorm takes a keyword-only ``bias``; on older torch we drop it ourselves."""


@signature_once
class _BatchNormFunction(torch.autograd.Function):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel; outputs ``(y, mean, var)``
    where ``mean, var`` are the statistics used (batch or running), not differentiable."""

    generate_vmap_rule = True

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
        acc = bs.stat_dtype(x.dtype)
        xa = x if x.dtype == acc else x.to(acc)
        if training:
            mean, var = bs.mean_var(bs.channel_view(xa, bs.channel_innermost(x)))
        else:
            mean = running_mean.to(acc, copy=True)  # type: ignore[union-attr]
            var = running_var.to(acc, copy=True)  # type: ignore[union-attr]
        return _normalize(x, xa, mean, torch.rsqrt(var + eps), weight, bias), mean, var

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, _bias, _running_mean, _running_var, training, eps = inputs
        _y, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.training = training
        ctx.eps = eps
        saved = (x, weight, mean, torch.rsqrt(var + eps))
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(
        ctx: Any, dout: Tensor, _dmean: Optional[Tensor], _dvar: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        x, gamma, mean, invstd = ctx.saved_tensors
        acc = bs.stat_dtype(x.dtype)
        xa = x if x.dtype == acc else x.to(acc)
        dy = dout if dout.dtype == acc else dout.to(acc)
        m = bs.values_per_channel(x)
        if ctx.training and torch.is_grad_enabled() and m > 0:
            # Double backward: mean and std are functions of x, so recompute them on the graph.
            xv = bs.channel_view(xa, bs.channel_innermost(x))
            var, mean = torch.var_mean(xv, (0,) if xv.dim() == 2 else (0, 2), correction=0)
            invstd = torch.rsqrt(var + ctx.eps)
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        dbeta = dgamma = None
        if need_dweight or need_dbias or (need_dx and ctx.training):
            dbeta, dgamma = _weight_grads(dy, xa, mean, invstd, bs.channel_innermost(x))
        dx = None
        if need_dx:
            dx = _dx(dy, xa, mean, invstd, gamma, dbeta, dgamma, m, ctx.training).to(x.dtype)
        dweight = dgamma.to(gamma.dtype) if need_dweight else None  # type: ignore[union-attr]
        dbias = dbeta.to(acc if gamma is None else gamma.dtype) if need_dbias else None  # type: ignore[union-attr]
        return dx, dweight, dbias, None, None, None, None


class _BatchNormFunctionJvp(_BatchNormFunction):
    """:class:`_BatchNormFunction` with forward mode (``torch.func.jacfwd``, ``forward_ad``),
    used in eager mode: dynamo refuses a Function that defines ``jvp``, so compiled code takes
    the plain one."""

    @staticmethod
    def jvp(
        ctx: Any,
        dx: Optional[Tensor],
        dweight: Optional[Tensor],
        dbias: Optional[Tensor],
        *_: Any,
    ) -> tuple[Optional[Tensor], None, None]:
        """Forward mode: with ``xn = (x - mu) / std``, ``y = gamma * xn + beta`` moves by
        ``gamma * dxn + dgamma * xn + dbeta`` where, in training, ``dxn = (dx - mean(dx) -
        xn * mean(xn * dx)) / std`` (the statistics move with ``x``); in eval ``dxn = dx / std``."""
        x, gamma, mean, invstd = ctx.saved_tensors
        acc = bs.stat_dtype(x.dtype)
        xa = x if x.dtype == acc else x.to(acc)
        k = invstd if gamma is None else gamma.to(acc) * invstd  # d y / d x at fixed statistics
        slope = torch.zeros_like(invstd) if dweight is None else dweight.to(acc) * invstd
        offset = torch.zeros_like(invstd) if dbias is None else dbias.to(acc)
        dy = None
        if dx is not None:
            dxa = dx if dx.dtype == acc else dx.to(acc)
            if ctx.training:
                inner = bs.channel_innermost(x)
                dsum, dxc_sum = bs.dout_sums(
                    bs.channel_view(dxa, inner), bs.channel_view(xa, inner), mean
                )
                m = bs.values_per_channel(x)
                slope = slope - k * invstd * invstd * dxc_sum / m
                offset = offset - k * dsum / m
            dy = dxa * bs.broadcastable(k, x)
        # y moves by k * dx + slope * (x - mean) + offset
        affine = (xa - bs.broadcastable(mean, x)) * bs.broadcastable(slope, x)
        affine = affine + bs.broadcastable(offset, x)
        dy = affine if dy is None else dy + affine
        return dy.to(x.dtype), None, None


def _normalize(
    x: Tensor,
    xa: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
) -> Tensor:
    """``y = gamma * xn + beta`` with ``xn = (x - mean) / std``, elementwise over ``xa`` (``x``
    in the statistics' dtype): ``y = xa * scale + shift`` per channel (``_batch_stats.affine``),
    in ``x``'s shape, memory format and dtype."""
    acc = xa.dtype
    scale = invstd if weight is None else invstd * weight.to(acc)  # gamma / std
    shift = -mean * scale if bias is None else torch.addcmul(bias.to(acc), mean, scale, value=-1)
    y = bs.affine(xa, scale, shift, bs.channel_innermost(x))
    # No ``.to`` when the dtype already fits: torch 2.11's dynamo then hands the backward a
    # zero ``dout`` under torch.compile (seen with torch 2.11.0; 2.4.1 and 2.14.1 are fine).
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _weight_grads(
    dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, channels_inner: bool
) -> tuple[Tensor, Tensor]:
    """The book's first two lines, per channel: ``dbeta = sum(dout)``, ``dgamma = sum(xn * dout)``
    (as ``sum(dout * xc) / std``: no ``xn`` is stored)."""
    dbeta, dout_xc = bs.dout_sums(
        bs.channel_view(dy, channels_inner), bs.channel_view(x, channels_inner), mean
    )
    dgamma = dout_xc * invstd
    return dbeta, dgamma


def _dx(
    dout: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    gamma: Optional[Tensor],
    dbeta: Optional[Tensor],
    dgamma: Optional[Tensor],
    m: int,
    training: bool,
) -> Tensor:
    """The book's lines from ``dxn`` to ``dx`` (§6.3.1), folded per channel (module docstring).

    ``dbeta`` and ``dgamma`` are the sums over the batch that normalised ``x`` (SyncBatchNorm
    passes the sums over all processes), ``m`` its number of values per channel.
    """
    g = torch.ones_like(invstd) if gamma is None else gamma.to(invstd.dtype)
    # dxn = gamma * dout;  dxc = dxn / std           (coefficient of dout in dxc)
    dxc_dout = g * invstd
    if not training:  # the statistics are constants: dx = dxc
        return dout * bs.broadcastable(dxc_dout, x)
    inv_m = 1.0 / m if m > 0 else 0.0  # an empty batch has an empty dx
    # dstd = -sum(dxn * xc) / std**2 = -gamma * dgamma / std
    dstd = -g * dgamma * invstd
    # dvar = 0.5 * dstd / std
    dvar = 0.5 * dstd * invstd
    # dxc += (2 / M) * xc * dvar                     (coefficient of xc in dxc)
    dxc_xc = 2.0 * inv_m * dvar
    # dmu = sum(dxc) = sum(dxn) / std, as sum(xc) = 0
    dmu = dxc_dout * dbeta
    # dx = dxc - dmu / M = dxc_dout * dout + dxc_xc * (x - mean) - dmu / M
    const = -(dxc_xc * mean + dmu * inv_m)
    dx = bs.affine(dout, dxc_dout, const, bs.channel_innermost(x))
    return bs.addcmul_fresh(dx, x, bs.broadcastable(dxc_xc, x))


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: Union[float, Tensor] = 0.1,
    eps: float = 1e-5,
    *,
    book: bool = False,
) -> Tensor:
    r"""Batch normalization, ``torch.nn.functional.batch_norm``'s semantics (``book=False``).

    In training the batch statistics normalise the input and, when given, ``running_mean`` and
    ``running_var`` are updated in place under ``no_grad`` (``(1 - momentum) * running +
    momentum * batch``, unbiased variance; ``momentum`` may be a 0-dim tensor). ``book=True``
    flattens inputs of more than 2 dims to ``(N, -1)`` (per-activation statistics) and stores
    the biased variance, as the book does. Every check runs before anything is computed or
    written, and errors are torch's, in its words.

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
    if has_torch_function_variadic(input, running_mean, running_var, weight, bias):
        return handle_torch_function(
            batch_norm, (input, running_mean, running_var, weight, bias), input,
            running_mean, running_var, weight, bias, training, momentum, eps, book=book,
        )  # fmt: skip
    if input.dim() < 2:
        raise ValueError(f"expected 2D or more input (got {input.dim()}D input)")
    x = input.flatten(1) if book and input.dim() > 2 else input
    if training:
        bs.check_batch_size(x, input.size())
    bs.check_eps(eps, training)
    bs.check_buffers(running_mean, running_var, training)
    bs.check_floating(input, "batch_norm")
    bs.check_channels(
        x.shape[1], running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    args = (x, weight, bias, running_mean, running_var, training, eps)
    if not records(x, weight, bias):  # nothing to differentiate: the forward itself (cheaper,
        y, mean, var = _BatchNormFunction.forward(*args)  # and torch 2.4's dynamo fails to
        # trace a Function called without grads)
    elif not torch.compiler.is_compiling():
        y, mean, var = _BatchNormFunctionJvp.apply(*args)
    else:
        y, mean, var = _BatchNormFunction.apply(*args)  # (dynamo refuses a jvp)
    if training and running_mean is not None and running_var is not None:
        bs.update_running_stats(
            running_mean, running_var, mean, var, momentum, bs.values_per_channel(x),
            unbiased=not book,
        )  # fmt: skip
    return y.view(input.shape) if x is not input else y


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Base of our BatchNorm1d/2d/3d and SyncBatchNorm: torch's ``_BatchNorm`` (constructor,
    parameters, buffers, ``state_dict``) with our forward. See the module docstring for the
    formula, the torch equivalent and the book's form (``book=True``)."""

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
        bias: bool = True,
        book: bool = False,
    ) -> None:
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        self.book = book  # read by reset_running_stats, which torch's constructor calls
        flag = {"bias": bias} if _TORCH_HAS_BIAS_FLAG else {}
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats,
            device=device, dtype=dtype, **flag,
        )  # fmt: skip
        if affine and not bias and not _TORCH_HAS_BIAS_FLAG:
            self.register_parameter("bias", None)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if self.track_running_stats and self.book:
            self.running_var.zero_()  # type: ignore[union-attr]  # the book starts from 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.affine and self.bias is None and "bias=" not in s:  # torch < 2.5 omits it
            s += ", bias=False"
        return s + (", book=True" if self.book else "")

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(_no_torchscript(self))

    def forward(self, input: Tensor) -> Tensor:
        if has_torch_function_unary(input):  # torch.fx tracing: the layer as one call
            return handle_torch_function(type(self).forward, (input,), self, input)
        self._check_input_dim(input)
        return self._forward_checked(input)

    def _forward_checked(self, input: Tensor) -> Tensor:
        """Normalise with batch or running statistics, as torch's ``_BatchNorm.forward``; the
        counter moves after the step succeeded (a refused input changes nothing)."""
        track = self.training and self.track_running_stats and self.num_batches_tracked is not None
        factor = bs.momentum_factor(self.momentum, self.num_batches_tracked) if track else 0.0
        # Batch statistics in training, and in eval when there are no running statistics.
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        y = batch_norm(
            input,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            self.weight,
            self.bias,
            bn_training,
            factor,
            self.eps,
            book=self.book,
        )
        if track:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        return y


def _no_torchscript(module: nn.Module) -> str:
    return (
        f"torch.jit.script cannot compile {type(module).__name__} (torch_dlbasics): its "
        "forward and backward are a Python torch.autograd.Function, which TorchScript (in "
        "maintenance mode) does not support. Use torch.compile(model) to compile the model, or "
        "torch.export.export(model, args) to export it as a graph."
    )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """BatchNorm over ``(N, C)`` or ``(N, C, L)`` input; a ``torch.nn.BatchNorm1d`` whose forward
    and backward are the book's (module docstring). Arguments as torch's, plus ``book``."""


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """BatchNorm over ``(N, C, H, W)`` input; a ``torch.nn.BatchNorm2d`` whose forward and
    backward are the book's (module docstring). Arguments as torch's, plus ``book``."""


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """BatchNorm over ``(N, C, D, H, W)`` input; a ``torch.nn.BatchNorm3d`` whose forward and
    backward are the book's (module docstring). Arguments as torch's, plus ``book``."""
