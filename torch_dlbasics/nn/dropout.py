r"""Dropout (§6.4.3, Srivastava et al. 2014) with a hand-written backward.

Inverted dropout (``inverted=True``, torch's form), with a keep mask ``m_i ~ Bernoulli(q)``,
``q`` the keep probability (``1 - p`` to the mask's resolution, below):

.. math::
    \text{train: } y_i = \frac{m_i x_i}{q}, \qquad \text{eval: } y_i = x_i,
    \qquad \frac{\partial L}{\partial x_i} = \frac{m_i}{q} \frac{\partial L}{\partial y_i}

so ``E[y] = x`` exactly, for every ``p`` in ``[0, 1)``. The book's form (``inverted=False``, its
``Dropout``): train ``y_i = m_i x_i``, eval ``y_i = (1 - p) x_i``; the expected output is the
same (to the mask's resolution), but the scaling happens at test time instead of training time.

Equivalent torch call: ``torch.nn.Dropout(p, inplace)`` (``inverted=True``; ours is a subclass
of it): same expectation, eval identity, p=0 identity, p=1 all zeros, integer input refused in
torch's words. The masks themselves differ from torch's (another sampling method), so outputs
agree in distribution, not element by element.

The mask: ``b`` random bits per element from torch's generator (``torch.randint``; ``b = 16``
where that gives ``1 - p`` exactly, as for ``p = 0.5``; else 32, or 64 where ``1 - p < 2**-9``), kept where the word, read as a signed ``b``-bit integer ``u``,
satisfies ``u >= round(p * 2**b) - 2**(b-1)``. The keep probability is ``q = 1 - round(p * 2**b) /
2**b``, within ``2**-24`` of ``1 - p`` relative (at worst ``2**-12``, for ``p`` within ``2**-41`` of
1), and the kept values are scaled by ``1 / q``, the probability actually used. The mask is
saved for backward as ``bool`` (1 byte per element) whatever ``b``. Since the bits come from
torch's RNG, ``torch.manual_seed`` reproduces a mask, ``torch.utils.checkpoint`` (which restores
the RNG state) recomputes the same one, and ``torch.vmap`` follows its ``randomness`` argument
("error", "different", "same") as with torch's Dropout.

Example::

    >>> import torch
    >>> from torch_dlbasics.nn import Dropout
    >>> _ = torch.manual_seed(0)
    >>> drop = Dropout(p=0.5)
    >>> y = drop(torch.ones(4, 1000))
    >>> sorted(set(y.unique().tolist()))
    [0.0, 2.0]
    >>> bool((drop.eval()(torch.ones(3)) == 1).all())
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from torch_dlbasics.nn._autograd import records, signature_once, transforms_active
from torch_dlbasics.nn._batch_stats import channel_innermost, dtype_name

__all__ = ["Dropout", "dropout"]

_WORDS = {16: torch.int16, 32: torch.int32, 64: torch.int64}


def _mask_bits(p: float) -> int:
    """16 where they give exactly ``1 - p`` (``p`` a multiple of 2^-16: 0.5, 0.25, ...), else 32,
    or 64 where 32 bits leave the keep probability more than 2^-24 (relative) off ``1 - p``."""
    if round(p * 2**16) == p * 2**16:
        return 16
    return 32 if (1.0 - p) * 2**32 >= 2**23 else 64


def _drop_threshold(p: float, bits: int) -> int:
    """Signed ``bits``-bit threshold: an element is kept when its word (signed) is >= this."""
    return round(p * 2**bits) - 2 ** (bits - 1)


def _keep_probability(p: float, bits: int) -> float:
    """The probability that :func:`_drop_threshold` keeps an element: ``1 - round(p 2^b) / 2^b``."""
    return (2**bits - round(p * 2**bits)) / 2**bits


def _random_words(n: int, bits: int, device: torch.device) -> Tensor:
    """``n`` uniformly distributed signed ``bits``-bit words from torch's generator."""
    if transforms_active():
        # torch.vmap (torch 2.4 has no batching rule for a dtype view): one draw per word
        high = 2 ** (bits - 1) - (1 if bits == 64 else 0)  # (int64's range as below)
        return torch.randint(-(2 ** (bits - 1)), high, (n,), dtype=_WORDS[bits], device=device)
    if bits == 16:  # both halves of uniform 32-bit draws
        draws = torch.randint(-(2**31), 2**31, ((n + 1) // 2,), dtype=torch.int32, device=device)
        return draws.view(torch.int16)[:n]
    if bits == 32:  # both halves of 64-bit draws: randint over 2**64 - 1 values is uniform to
        # 2**-64 (one value twice as likely, one never drawn), far below float64's resolution
        draws = torch.randint(
            -(2**63), 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64, device=device
        )
        return draws.view(torch.int32)[:n]
    draws = torch.randint(-(2**31), 2**31, (2 * n,), dtype=torch.int32, device=device)
    return draws.view(torch.int64)  # two uniform 32-bit draws per word


def _keep_mask(x: Tensor, p: float, bits: int) -> Tensor:
    """Bool mask shaped and strided like ``x``, True with probability ``_keep_probability``."""
    keep = _random_words(x.numel(), bits, x.device) >= _drop_threshold(p, bits)
    if not channel_innermost(x):
        return keep.view(x.shape)
    # Channels last: lay the mask out as (N, *spatial, C) and view it as (N, C, *spatial), so
    # that it has x's strides (and the product x's memory format).
    inner = keep.view(x.shape[0], *x.shape[2:], x.shape[1])
    return inner.movedim(-1, 1)


@signature_once
class _DropoutFunction(torch.autograd.Function):
    """``y = x * keep * scale`` with a given bool mask ``keep``; backward ``dout * keep * scale``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, keep: Tensor, scale: float, inplace: bool) -> Tensor:
        if inplace:
            return x.mul_(keep).mul_(scale)
        return torch.addcmul(x.new_zeros(()), x, keep, value=scale)  # one pass: x * keep * scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, keep, scale, inplace = inputs
        if inplace:
            ctx.mark_dirty(x)
        ctx.scale = scale
        ctx.save_for_backward(keep)
        ctx.save_for_forward(keep)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor, None, None, None]:
        (keep,) = ctx.saved_tensors
        dx = torch.addcmul(dout.new_zeros(()), dout, keep, value=ctx.scale)  # dout * mask * scale
        return dx, None, None, None


class _DropoutFunctionJvp(_DropoutFunction):
    """:class:`_DropoutFunction` with forward mode, for eager mode (dynamo refuses ``jvp``)."""

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, *_: Any) -> Tensor:
        (keep,) = ctx.saved_tensors
        return torch.addcmul(dx.new_zeros(()), dx, keep, value=ctx.scale)


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:  # NaN too
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _check_scalable(input: Tensor, factor: float) -> None:
    """An integer or bool tensor cannot hold ``x * factor``: torch's refusal, in its words."""
    if factor != 1.0 and not (input.is_floating_point() or input.is_complex()):
        raise RuntimeError(
            f"result type Float can't be cast to the desired output type {dtype_name(input)}"
        )


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    inverted: bool = True,
) -> Tensor:
    """Dropout, ``torch.nn.functional.dropout``'s semantics; ``inverted=False`` is the book's.

    Example::

        >>> import torch
        >>> from torch_dlbasics.nn.functional import dropout
        >>> x = torch.ones(5)
        >>> dropout(x, p=0.5, training=False) is x
        True
        >>> dropout(x, p=0.5, training=False, inverted=False)
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.5000])
    """
    if has_torch_function_unary(input):  # torch.fx tracing, tensor subclasses
        return handle_torch_function(
            dropout, (input,), input, p, training, inplace, inverted=inverted
        )
    _check_p(p)
    if not training:
        if inverted or p == 0.0:
            return input
        _check_scalable(input, 1.0 - p)
        return input.mul_(1.0 - p) if inplace else input * (1.0 - p)  # the book's test-time scaling
    if p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        if not (input.is_floating_point() or input.is_complex()):  # all zeros, as torch's
            return input.zero_() if inplace else torch.zeros_like(input)
        keep = torch.zeros_like(input, dtype=torch.bool)
        scale = 0.0 if inverted else 1.0
    else:
        _check_scalable(input, 1.0 - p)  # torch refuses a mask on integers (the book's form too)
        bits = _mask_bits(p)
        scale = 1.0 / _keep_probability(p, bits) if inverted else 1.0
        keep = _keep_mask(input, p, bits)
    if not records(input):  # nothing to differentiate: the forward itself (cheaper, and
        return _DropoutFunction.forward(input, keep, scale, inplace)  # torch 2.4's dynamo
        # fails to trace a Function called without grads)
    if not torch.compiler.is_compiling():
        return _DropoutFunctionJvp.apply(input, keep, scale, inplace)
    return _DropoutFunction.apply(input, keep, scale, inplace)  # (dynamo refuses a jvp)


class Dropout(nn.Dropout):
    """Dropout module; a ``torch.nn.Dropout`` whose forward and backward are ours (module
    docstring).

    Args:
        p: probability of an element to be zeroed, in [0, 1].
        inplace: do the operation in place.
        inverted: ``True`` (default, torch): scale kept elements by ``1 / q`` in training,
            identity in eval. ``False`` (the book's ``Dropout``): no scaling in training,
            multiply by ``1 - p`` in eval.
    """

    inverted: bool

    def __init__(self, p: float = 0.5, inplace: bool = False, *, inverted: bool = True) -> None:
        _check_p(p)
        super().__init__(p, inplace)
        self.inverted = inverted

    def forward(self, input: Tensor) -> Tensor:
        if has_torch_function_unary(input):  # torch.fx tracing: the layer as one call, which
            # reads self.training when it runs (not the mode at tracing time)
            return handle_torch_function(type(self).forward, (input,), self, input)
        return dropout(input, self.p, self.training, self.inplace, inverted=self.inverted)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.inverted else ", inverted=False")

    def __prepare_scriptable__(self) -> nn.Module:
        from torch_dlbasics.nn.batchnorm import _no_torchscript

        raise RuntimeError(_no_torchscript(self))
