"""Momentum, the book's ``class Momentum`` (§6.1.4): a velocity that keeps the learning rate inside.

.. math::

    v \\leftarrow \\alpha v - \\eta \\frac{\\partial L}{\\partial W} \\qquad W \\leftarrow W + v
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .sgd import SGD

__all__ = ["Momentum", "momentum"]


def momentum(
    p: Tensor,
    g: Tensor,
    v: Tensor,
    s: Optional[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One Momentum step of parameter ``p`` (W) with gradient ``g`` and velocity ``v``, in place.

    ``dampening`` is torch's (0: the book); ``s``: scratch for the changed gradient (``None``:
    a new tensor). Works unchanged on :class:`~torch_dlbasics.optim._foreach.TensorList` s.
    """
    if maximize:
        g = torch.neg(g, out=s)  # g = -g
    if weight_decay != 0:
        g = torch.add(g, p, alpha=weight_decay, out=s)  # g = g + λW  (L2 as a gradient, §6.4.2)
    v.mul_(momentum).add_(g, alpha=-(1 - dampening) * lr)  # v = αv - (1-τ)*lr*g
    p.add_(v)  # W = W + v


class Momentum(SGD):
    r"""Momentum SGD as in the book (§6.1.4), the learning rate kept inside the velocity.

    .. math::

        g \leftarrow \pm \frac{\partial L}{\partial W} + \lambda W \qquad
        v \leftarrow \alpha v - (1-\tau)\,\eta\, g \qquad
        W \leftarrow W + v

    with :math:`v_0 = 0` (``-`` when ``maximize``; :math:`\lambda` = ``weight_decay``; torch's
    dampening :math:`\tau` is 0 by default and not applied at the first step, as torch).
    This is :class:`~torch_dlbasics.optim.SGD` with the book's default ``momentum=0.9``: the
    same signature (torch's SGD), the same checkpoints; ``nesterov=True`` makes it
    :class:`~torch_dlbasics.optim.Nesterov`, ``momentum=0`` plain SGD.

    Equivalent torch call: ``torch.optim.SGD(params, lr=lr, momentum=momentum,
    dampening=dampening, weight_decay=weight_decay, maximize=maximize)``. They agree exactly
    (to rounding) while ``lr`` is constant, with ``v = -lr * momentum_buffer``: torch keeps
    ``b = mu*b + (1-tau)*g; W -= lr*b`` (lr outside the buffer).

    When ``lr`` changes (an LR scheduler), the two differ: here an lr change acts on new
    gradients only and the velocity keeps the old steps' lr; torch's buffer is multiplied by the
    *new* lr as a whole. Example (``mu = 0.9``, gradient 1 every step, lr 1.0 at step 1, 0.1 at
    step 2): book ``v1 = -1, v2 = 0.9*(-1) - 0.1 = -1.0`` moves W by -1.0 at step 2; torch
    ``b1 = 1, b2 = 1.9`` moves W by ``-0.1*1.9 = -0.19``.

    Differences from the book: weight decay, maximize, dampening are additions (off by
    default). State per parameter: ``v`` (book ``self.v[key]``), created at the parameter's
    first step; :func:`torch_dlbasics.optim.convert.to_torch` / ``from_torch`` convert
    checkpoints.

    Args:
        params: iterable of parameters or named parameters, or dicts defining parameter groups.
        lr: learning rate :math:`\eta`, a float or a 1-element tensor (book default 0.01).
        momentum: :math:`\alpha` (book default 0.9).
        dampening: torch's dampening :math:`\tau` (default 0).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        nesterov: the Nesterov step instead (default False).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.
        differentiable: the step is differentiable (autograd records it), as torch's.
        fused: ``True`` compiles the update with ``torch.compile`` (CPU and CUDA).

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import Momentum
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = Momentum([w], lr=0.1, momentum=0.9)
        >>> for _ in range(2):
        ...     w.grad = torch.ones(1)
        ...     opt.step()
        >>> opt.state[w]["v"], w.data  # v2 = 0.9*(-0.1) - 0.1
        (tensor([-0.1900]), tensor([0.7100]))
    """

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.01,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: Union[float, Tensor] = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
