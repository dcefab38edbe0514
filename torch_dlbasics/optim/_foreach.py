"""The multi-tensor path: a list of tensors whose Tensor methods are ``torch._foreach_*`` calls.

Each update function is written once against the Tensor API (``m.lerp_(g, 1 - beta1)``,
``torch.sqrt(v, out=s)``, ``p.addcdiv_(m, s, value=-lr_t)``). Called with tensors it updates one
tensor; called with :class:`TensorList` arguments the same lines update every tensor of a list
(one device and dtype), each line one ``torch._foreach_*`` call. On CPU a foreach op runs the
per-tensor kernel on each tensor, so both paths give bit-identical results (tested per dtype;
one op needs help for that, see :meth:`TensorList.mul_`).

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

__all__ = ["GradList", "TensorList", "tensor_alpha_dispatches"]

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
        if not isinstance(other, list) and _rounds_scalars(self):
            # CPU's foreach mul rounds a number to a 16-bit dtype first (0.9 -> 0.8999 in
            # float16); as a float64 0-dim tensor it is used in full, as Tensor.mul_ uses it.
            other = torch.tensor(other, dtype=torch.float64)
        with _plain():
            torch._foreach_mul_(self, other)
        return self

    def lerp_(self, end: TensorList, weight: Scalar) -> TensorList:
        with _plain():
            if isinstance(weight, TensorList):  # a 0-dim weight per tensor (in its dtype)
                for x, e, w in zip(self, end, weight):
                    x.lerp_(e, w.to(x.dtype))
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

    def clamp_min_(self, other: TensorList) -> TensorList:
        with _plain():  # max(self, other): the foreach op torch's AMSGrad uses (DTensor has it)
            torch._foreach_maximum_(self, other)
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


class GradList(TensorList):
    """The differentiable path (``differentiable=True``): the same methods, out of place.

    Each in-place method computes its result with ordinary (per-tensor, differentiable) ops and
    rebinds the list's elements, so no tensor that autograd saved for the backward is ever
    written; torch's own differentiable steps clone for the same reason. The engine hands the
    update function copies of the parameters, then writes the results back into the state and,
    with one ``copy_``, into the parameters. Scalars may be tensors that require grad
    (``lr``, ``betas``, ``weight_decay``): they enter the graph.
    """

    __slots__ = ()

    def _set(self, values: Any) -> GradList:
        self[:] = list(values)
        return self

    def add_(self, other: Any, *, alpha: Scalar = 1) -> GradList:
        if not isinstance(other, list):
            return self._set(x + other for x in self)
        return self._set(_add_scaled(x, o, a) for x, o, a in zip(self, other, _each(alpha, self)))

    def mul_(self, other: Scalar) -> GradList:
        return self._set(x * o for x, o in zip(self, _each(other, self)))

    def lerp_(self, end: TensorList, weight: Scalar) -> GradList:
        return self._set(x.lerp(e, _as(w, x)) for x, e, w in zip(self, end, _each(weight, self)))

    def addcmul_(self, t1: TensorList, t2: TensorList, *, value: Scalar = 1) -> GradList:
        return self._set(
            x + a * b * v if isinstance(v, torch.Tensor) else x.addcmul(a, b, value=v)
            for x, a, b, v in zip(self, t1, t2, _each(value, self))
        )

    def addcdiv_(self, t1: TensorList, t2: TensorList, *, value: Scalar = 1) -> GradList:
        return self._set(
            x + a / b * v if isinstance(v, torch.Tensor) else x.addcdiv(a, b, value=v)
            for x, a, b, v in zip(self, t1, t2, _each(value, self))
        )

    def clamp_min_(self, other: TensorList) -> GradList:
        return self._set(x.clamp_min(o) for x, o in zip(self, other))

    def sqrt_(self) -> GradList:
        return self._set(x.sqrt() for x in self)

    def neg_(self) -> GradList:
        return self._set(-x for x in self)


def _each(scalar: Scalar, like: list) -> list:
    """One scalar per tensor: a per-tensor list as it is, a number repeated."""
    return scalar if isinstance(scalar, list) else [scalar] * len(like)


def _as(w: Any, x: torch.Tensor) -> Any:
    """A tensor weight in ``x``'s dtype (lerp wants them equal)."""
    return w.to(x.dtype) if isinstance(w, torch.Tensor) else w


def _add_scaled(x: torch.Tensor, o: torch.Tensor, a: Any) -> torch.Tensor:
    return x + o * a if isinstance(a, torch.Tensor) else x.add(o, alpha=a)


_plain = torch._C.DisableTorchFunctionSubclass
"""Inside: the foreach ops see TensorLists as plain lists of tensors."""

_REDUCED = (torch.float16, torch.bfloat16)


def _rounds_scalars(tensors: TensorList) -> bool:
    """Plain 16-bit CPU tensors, where ``torch._foreach_mul_(tensors, number)`` would round."""
    t = tensors[0] if tensors else None
    return (
        t is not None
        and t.dtype in _REDUCED
        and t.device.type == "cpu"
        and type(t) in (torch.Tensor, torch.nn.Parameter)
    )


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
    if isinstance(x, GradList):
        return GradList(t.sqrt() for t in x)
    if out is None:
        return _new(torch._foreach_sqrt, x)
    return _into(out, x).sqrt_()


def _neg(out: Optional[TensorList], x: TensorList) -> TensorList:
    if isinstance(x, GradList):
        return GradList(-t for t in x)
    if out is None:
        return _new(torch._foreach_neg, x)
    return _into(out, x).neg_()


def _add(out: Optional[TensorList], x: TensorList, y: TensorList, *, alpha: Scalar = 1) -> Any:
    if isinstance(x, GradList) or isinstance(y, GradList):
        return GradList(_add_scaled(a, b, c) for a, b, c in zip(x, y, _each(alpha, x)))
    if out is None:
        if isinstance(alpha, TensorList):
            return _new(torch._foreach_add, x, _new(torch._foreach_mul, y, alpha))
        with _plain():
            return TensorList(torch._foreach_add(x, y, alpha=alpha))
    return _into(out, x).add_(y, alpha=alpha)


_FUNCTIONS: dict[Callable, Callable] = {
    torch.sqrt: _sqrt,
    torch.neg: _neg,
    torch.add: _add,
}


_ALPHA_DISPATCHES: list[bool] = []


def tensor_alpha_dispatches() -> bool:
    """Whether ``torch.add(a, b, alpha=<TensorList>)`` reaches ``__torch_function__`` (newer
    torch) instead of failing in the argument parser (torch 2.4): checked once."""
    if not _ALPHA_DISPATCHES:
        x = torch.zeros(1)
        try:
            torch.add(GradList([x]), GradList([x]), alpha=TensorList([torch.ones(())]))
            _ALPHA_DISPATCHES.append(True)
        except TypeError:
            _ALPHA_DISPATCHES.append(False)
    return _ALPHA_DISPATCHES[0]
