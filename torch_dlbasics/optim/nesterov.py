"""Nesterov, the book's ``class Nesterov`` (with §6.1; ``common/optimizer.py``), as corrected
by its author in January 2021.

.. math::

    W \\leftarrow W + \\alpha^2 v - (1+\\alpha)\\eta \\frac{\\partial L}{\\partial W} \\qquad
    v \\leftarrow \\alpha v - \\eta \\frac{\\partial L}{\\partial W}
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .sgd import SGD

__all__ = ["Nesterov", "nesterov"]


def nesterov(
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
    """One Nesterov step of parameter ``p`` (W) with gradient ``g`` and velocity ``v``, in place.

    ``W`` moves with ``v`` from *before* its update (the 2021 correction). ``dampening`` is
    torch's (0: the book, and all torch allows with Nesterov at construction); ``s``: scratch for
    the changed gradient (``None``: a new tensor). Works unchanged on
    :class:`~torch_dlbasics.optim._foreach.TensorList` s.
    """
    if maximize:
        g = torch.neg(g, out=s)  # g = -g
    if weight_decay != 0:
        g = torch.add(g, p, alpha=weight_decay, out=s)  # g = g + λW  (L2 as a gradient, §6.4.2)
    # W = W + α²v - (1+α)*lr*g
    p.add_(v, alpha=momentum**2).add_(g, alpha=-(1 + momentum * (1 - dampening)) * lr)
    v.mul_(momentum).add_(g, alpha=-(1 - dampening) * lr)  # v = αv - lr*g


class Nesterov(SGD):
    r"""Nesterov momentum as in the book (§6.1 code), with its author's 2021 correction.

    .. math::

        g \leftarrow \pm \frac{\partial L}{\partial W} + \lambda W \qquad
        W \leftarrow W + \alpha^2 v - (1+\alpha)\,\eta\, g \qquad
        v \leftarrow \alpha v - \eta\, g

    with :math:`v_0 = 0`; the update of ``W`` uses ``v`` *before* its update. This is
    :class:`~torch_dlbasics.optim.SGD` with the book's defaults ``momentum=0.9,
    nesterov=True`` (torch's SGD signature; ``nesterov=False`` makes it
    :class:`~torch_dlbasics.optim.Momentum`).

    Erratum: the book's printed code (and the seed file) first updates ``v`` and then uses the
    new ``v`` (``W += mu**2 * v_new - (1+mu)*lr*g``), which matches neither Bengio et al. 2012
    (arXiv:1212.0901, eq. 7) nor torch. The author corrected it in January 2021 to the order
    above, which is what this class implements.

    Equivalent torch call: ``torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
    weight_decay=weight_decay, maximize=maximize)``. They agree exactly (to rounding) while
    ``lr`` is constant, with ``v = -lr * momentum_buffer`` (torch: ``b = mu*b + g;
    W -= lr*(g + mu*b)``, which expands to ``W -= lr*((1+mu)*g + mu**2*b_old)``). Under an LR
    scheduler they differ as for :class:`~torch_dlbasics.optim.Momentum` (the velocity keeps
    each step's own lr).

    Differences from the book: the 2021 correction above; weight decay and maximize are
    additions (off by default). State per parameter: ``v``, created at the first step.

    Args:
        params: iterable of parameters or named parameters, or dicts defining parameter groups.
        lr: learning rate :math:`\eta`, a float or a 1-element tensor (book default 0.01).
        momentum: :math:`\alpha` (book default 0.9; must be > 0).
        dampening: must be 0 with Nesterov (torch's rule).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        nesterov: default True (False: the Momentum step).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.
        differentiable: the step is differentiable (autograd records it), as torch's.
        fused: ``True`` compiles the update with ``torch.compile`` (CPU and CUDA).

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import Nesterov
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = Nesterov([w], lr=0.1, momentum=0.9)
        >>> for _ in range(2):
        ...     w.grad = torch.ones(1)
        ...     opt.step()
        >>> opt.state[w]["v"], w.data  # step 2: W += 0.81*(-0.1) - 1.9*0.1
        (tensor([-0.1900]), tensor([0.5390]))
    """

    _FILL: ClassVar[dict[str, Any]] = {**SGD._FILL, "nesterov": True}  # checkpoints before the flag

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.01,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: Union[float, Tensor] = 0.0,
        nesterov: bool = True,
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
