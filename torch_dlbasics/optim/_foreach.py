"""The multi-tensor path: a list of tensors whose Tensor methods are ``torch._foreach_*`` calls.

Each update function is written once against the Tensor API (``m.lerp_(g, 1 - beta1)``,
``torch.sqrt(v, out=s)``, ``p.addcdiv_(m, s, value=-lr_t)``). Called with tensors it updates one
tensor; called with :class:`TensorList` arguments the same lines update every tensor of a list
(one device and dtype), each line one ``torch._foreach_*`` call. On CPU a foreach op runs the
per-tensor kernel on each tensor, so both paths give bit-identical results (tested per dtype).

Scalars given to a ``TensorList`` method are Python numbers (one value for the whole list) or
a ``TensorList`` of 0-dim tensors, one per tensor: the step counts of ``capturable=True`` (kept
on the device, no host read) and hyperparameters that need gradients (``differentiable=True``).
The arithmetic operators build such lists (``beta2 ** t``, ``1 - x``, ``lr * x``) with foreach
ops, so the step-size lines of the update functions run unchanged on them.

>>> import torch
>>> p, g = TensorList([torch.ones(2), torch.ones(3)]), TensorList([torch.ones(2), torch.ones(3)])
>>> _ = p.add_(g, alpha=-0.5)  # torch._foreach_add_(p, g, alpha=-0.5)
>>> p
[tensor([0.5000, 0.5000]), tensor([0.5000, 0.5000, 0.5000])]
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

__all__ = ["TensorList"]

Scalar = Union[float, "TensorList"]


class TensorList(list):
    """Tensors of one device and dtype, updated together by ``torch._foreach_*`` ops.

    Only the Tensor methods and torch functions the five update functions use are provided;
    anything else raises ``TypeError`` instead of silently treating the list as a tensor.
    """

    __slots__ = ()

    # In-place Tensor methods ------------------------------------------------------------
    def add_(self, other: Any, *, alpha: Scalar = 1) -> TensorList:
        with _plain():
            if not isinstance(other, list):  # one number for every tensor
                torch._foreach_add_(self, other)
            elif isinstance(alpha, TensorList):
                torch._foreach_add_(self, torch._foreach_mul(other, alpha))
            else:
                torch._foreach_add_(self, other, alpha=alpha)
        return self

    def mul_(self, other: Scalar) -> TensorList:
        with _plain():
            torch._foreach_mul_(self, other)
        return self

    def lerp_(self, end: TensorList, weight: Scalar) -> TensorList:
        with _plain():
            if isinstance(weight, TensorList):  # a 0-dim weight per tensor
                for x, e, w in zip(self, end, weight):
                    x.lerp_(e, w)
            else:
                torch._foreach_lerp_(self, end, weight)
        return self

    def addcmul_(self, t1: TensorList, t2: TensorList, *, value: Scalar = 1) -> TensorList:
        with _plain():
            if isinstance(value, TensorList):
                torch._foreach_addcmul_(self, torch._foreach_mul(t1, value), t2)
            else:
                torch._foreach_addcmul_(self, t1, t2, value)
        return self

    def addcdiv_(self, t1: TensorList, t2: TensorList, *, value: Scalar = 1) -> TensorList:
        with _plain():
            if isinstance(value, TensorList):
                torch._foreach_addcdiv_(self, torch._foreach_mul(t1, value), t2)
            else:
                torch._foreach_addcdiv_(self, t1, t2, value)
        return self

    def sqrt_(self) -> TensorList:
        with _plain():
            torch._foreach_sqrt_(self)
        return self

    def neg_(self) -> TensorList:
        with _plain():
            torch._foreach_neg_(self)
        return self

    def __iadd__(self, other: Any) -> TensorList:  # ``t += 1`` on capturable step counts
        return self.add_(other)

    # Arithmetic on per-tensor 0-dim scalars (step sizes from device step counts) --------
    def __add__(self, other: Any) -> TensorList:
        return _new(torch._foreach_add, self, other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> TensorList:
        return _new(torch._foreach_sub, self, other)

    def __rsub__(self, other: Any) -> TensorList:
        return _new(torch._foreach_neg, self).add_(other)

    def __mul__(self, other: Any) -> TensorList:
        return _new(torch._foreach_mul, self, other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> TensorList:
        return _new(torch._foreach_div, self, other)

    def __rtruediv__(self, other: Any) -> TensorList:
        return _new(torch._foreach_reciprocal, self).mul_(other)

    def __pow__(self, other: Any) -> TensorList:
        return _new(torch._foreach_pow, self, other)

    def __rpow__(self, other: Any) -> TensorList:
        return _new(torch._foreach_pow, other, self)

    def __neg__(self) -> TensorList:
        return _new(torch._foreach_neg, self)

    # torch functions with ``out=`` ----------------------------------------------------------
    @classmethod
    def __torch_function__(
        cls, func: Callable, types: Any, args: tuple = (), kwargs: Optional[dict] = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        out = kwargs.pop("out", None)
        handler = _FUNCTIONS.get(func)
        if handler is None:
            return NotImplemented
        return handler(out, *args, **kwargs)


_plain = torch._C.DisableTorchFunctionSubclass
"""Inside: the foreach ops see TensorLists as plain lists of tensors."""


def _new(op: Callable, *args: Any) -> TensorList:
    with _plain():
        return TensorList(op(*args))


def _into(out: TensorList, x: TensorList) -> TensorList:
    """``out`` holding a copy of ``x`` (``x`` itself when they are the same list)."""
    if out is not x:
        with _plain():
            torch._foreach_copy_(out, x)
    return out


def _sqrt(out: Optional[TensorList], x: TensorList) -> TensorList:
    if out is None:
        return _new(torch._foreach_sqrt, x)
    return _into(out, x).sqrt_()


def _neg(out: Optional[TensorList], x: TensorList) -> TensorList:
    if out is None:
        return _new(torch._foreach_neg, x)
    return _into(out, x).neg_()


def _add(out: Optional[TensorList], x: TensorList, y: TensorList, *, alpha: Scalar = 1) -> Any:
    if out is None:
        if isinstance(alpha, TensorList):
            return _new(torch._foreach_add, x, _new(torch._foreach_mul, y, alpha))
        with _plain():
            return TensorList(torch._foreach_add(x, y, alpha=alpha))
    return _into(out, x).add_(y, alpha=alpha)


def _maximum(out: Optional[TensorList], x: TensorList, y: TensorList) -> TensorList:
    if out is None:
        return _new(torch._foreach_maximum, x, y)
    out = _into(out, x)
    with _plain():
        torch._foreach_maximum_(out, y)
    return out


_FUNCTIONS: dict[Callable, Callable] = {
    torch.sqrt: _sqrt,
    torch.neg: _neg,
    torch.add: _add,
    torch.maximum: _maximum,
}
