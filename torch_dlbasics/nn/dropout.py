r"""Dropout (Srivastava et al., 2014) with a hand-written backward.

Inverted dropout (``inverted=True``, torch's form), with a keep mask ``m_i ~ Bernoulli(1 - p)``:

.. math::
    \text{train: } y_i = \frac{m_i x_i}{1 - p}, \qquad \text{eval: } y_i = x_i,
    \qquad \frac{\partial L}{\partial x_i} = \frac{m_i}{1 - p} \frac{\partial L}{\partial y_i}

The book's form (``inverted=False``): train ``y_i = m_i x_i``, eval ``y_i = (1 - p) x_i``; the
expected output is the same, but the scaling happens at test time instead of training time.

Equivalent torch call: ``torch.nn.Dropout(p, inplace)`` (``inverted=True``): same expectation,
eval identity, p=0 identity, p=1 all zeros. The masks themselves differ from torch's (another
sampling method), so outputs agree in distribution, not element by element.

The mask: 16 random bits per element taken from torch's generator (``torch.randint`` over the
full int32 range, two elements per draw), kept where the bits, read as a signed int16 ``u``, satisfy
``u >= round(p * 2**16) - 2**15``. The keep probability is ``1 - round(p * 2**16) / 2**16``:
resolution 2**-16, within 2**-17 of ``1 - p``. It is saved for backward as ``bool`` (1 byte per
element). Since the bits come from torch's RNG, ``torch.manual_seed`` reproduces a mask and
``torch.utils.checkpoint`` (which restores the RNG state) recomputes the same one.

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

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Dropout", "dropout"]

_BITS = 16


def _drop_threshold(p: float) -> int:
    """Signed 16-bit threshold: an element is kept when its bits (as int16) are >= this."""
    return round(p * 2**_BITS) - 2 ** (_BITS - 1)


def _keep_mask(x: Tensor, p: float) -> Tensor:
    """Bool mask shaped (and strided) like ``x``, True with probability 1 - round(p*2^16)/2^16."""
    n = x.numel()
    # 32 uniform bits per int32 draw from torch's generator: two elements' worth.
    words = torch.randint(-(2**31), 2**31, ((n + 1) // 2,), dtype=torch.int32, device=x.device)
    keep = words.view(torch.int16)[:n] >= _drop_threshold(p)
    if x.is_contiguous():
        return keep.view(x.shape)
    like = torch.empty_like(x, dtype=torch.bool)  # x's memory format (dense), or contiguous
    return keep.as_strided(like.shape, like.stride())


class _DropoutFunction(torch.autograd.Function):
    """``y = x * keep * scale`` with a given bool mask ``keep``; backward ``dout * keep * scale``."""

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

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor, None, None, None]:
        (keep,) = ctx.saved_tensors
        dx = torch.addcmul(dout.new_zeros(()), dout, keep, value=ctx.scale)  # dout * mask * scale
        return dx, None, None, None


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
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training:
        if inverted or p == 0.0:
            return input
        return input.mul_(1.0 - p) if inplace else input * (1.0 - p)  # the book's test-time scaling
    if p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        keep = torch.zeros_like(input, dtype=torch.bool)
        scale = 0.0 if inverted else 1.0
    else:
        keep = _keep_mask(input, p)
        scale = 1.0 / (1.0 - p) if inverted else 1.0
    return _DropoutFunction.apply(input, keep, scale, inplace)


class Dropout(nn.Module):
    """Dropout module; ``torch.nn.Dropout``'s equivalent. See the module docstring.

    Args:
        p: probability of an element to be zeroed, in [0, 1].
        inplace: do the operation in place.
        inverted: ``True`` (default, torch): scale kept elements by ``1 / (1 - p)`` in training,
            identity in eval. ``False`` (the book's ``Dropout``): no scaling in training,
            multiply by ``1 - p`` in eval.
    """

    __constants__: ClassVar[list[str]] = ["p", "inplace", "inverted"]

    def __init__(self, p: float = 0.5, inplace: bool = False, *, inverted: bool = True) -> None:
        if p < 0.0 or p > 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        super().__init__()
        self.p = p
        self.inplace = inplace
        self.inverted = inverted

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training, self.inplace, inverted=self.inverted)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" + ("" if self.inverted else ", inverted=False")
