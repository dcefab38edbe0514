"""Nesterov, the book's ``class Nesterov`` as corrected by its author in January 2021.

.. math::

    W \\leftarrow W + \\alpha^2 v - (1+\\alpha)\\eta \\frac{\\partial L}{\\partial W} \\qquad
    v \\leftarrow \\alpha v - \\eta \\frac{\\partial L}{\\partial W}
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from .convert import (
    check_state_dict,
    effective_grad,
    effective_grads_foreach,
    params_with_grads,
    use_foreach,
)

__all__ = ["Nesterov", "nesterov", "nesterov_foreach"]


def nesterov(p: Tensor, g: Tensor, v: Tensor, *, lr: float, momentum: float) -> None:
    """One Nesterov update of one tensor, in place (the book's corrected code, 2021)."""
    p.add_(v, alpha=momentum**2)  # p += momentum**2*v ...
    p.add_(g, alpha=-(1 + momentum) * lr)  # ... - (1+momentum)*lr*g
    v.mul_(momentum).add_(g, alpha=-lr)  # v = momentum*v - lr*g


def nesterov_foreach(
    p: list[Tensor], g: list[Tensor], v: list[Tensor], *, lr: float, momentum: float
) -> None:
    """:func:`nesterov` for lists of tensors of one device and dtype (``torch._foreach_*``)."""
    torch._foreach_add_(p, v, alpha=momentum**2)  # p += momentum**2*v ...
    torch._foreach_add_(p, g, alpha=-(1 + momentum) * lr)  # ... - (1+momentum)*lr*g
    torch._foreach_mul_(v, momentum)  # v = momentum*v ...
    torch._foreach_add_(v, g, alpha=-lr)  # ... - lr*g


class Nesterov(Optimizer):
    r"""Nesterov momentum as in the book (ch. 6.1.6 code), with its author's 2021 correction.

    .. math::

        g \leftarrow \pm g + \lambda p \qquad
        p \leftarrow p + \mu^2 v - (1+\mu)\,\eta\, g \qquad
        v \leftarrow \mu v - \eta\, g

    with :math:`v_0 = 0`; the update of ``p`` uses ``v`` *before* its update.

    Erratum: the book's printed code (and the seed file) first updates ``v`` and then uses the
    new ``v`` (``p += mu**2 * v_new - (1+mu)*lr*g``), which matches neither Bengio et al. 2012
    (arXiv:1212.0901, eq. 7) nor torch. The author corrected it in January 2021 to the order
    above, which is what this class implements.

    Equivalent torch call: ``torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
    weight_decay=weight_decay, maximize=maximize)``. They agree exactly when ``lr`` is constant,
    with ``v = -lr * momentum_buffer`` (torch: ``b = mu*b + g; p -= lr*(g + mu*b)``, which
    expands to ``p -= lr*((1+mu)*g + mu**2*b_old)``). Under an LR scheduler they differ as for
    :class:`~torch_dlbasics.optim.Momentum` (the velocity keeps each step's own lr).

    Differences from the book: the 2021 correction above; weight decay and maximize are
    additions (off by default). State per parameter: ``v``, created at the first step.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (book default 0.01).
        momentum: :math:`\mu` (book default 0.9).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import Nesterov
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = Nesterov([w], lr=0.1, momentum=0.9)
        >>> for _ in range(2):
        ...     w.grad = torch.ones(1)
        ...     opt.step()
        >>> opt.state[w]["v"], w.data  # step 2: p += 0.81*(-0.1) - 1.9*0.1
        (tensor([-0.1900]), tensor([0.5390]))
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: Optional[bool] = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if momentum == 0.0:
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _state_keys(group: dict[str, Any]) -> set[str]:
        return {"v"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check ``state_dict`` fits (class, parameter layout) before loading; see ``convert``."""
        check_state_dict(self, state_dict, self._state_keys)
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform one update; return the closure's loss (``None`` without a closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, params, grads in params_with_grads(self):
            if not params:
                continue
            vs = []
            for p in params:
                state = self.state[p]
                if "v" not in state:
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                vs.append(state["v"])
            lr, mu = group["lr"], group["momentum"]
            wd, maximize = group["weight_decay"], group["maximize"]
            if use_foreach(group["foreach"], params):
                grouped = self._group_tensors_by_device_and_dtype([params, grads, vs])
                for (ps, gs, v), _ in grouped.values():
                    gs = effective_grads_foreach(self, ps, gs, wd, maximize)
                    nesterov_foreach(ps, gs, v, lr=lr, momentum=mu)
            else:
                for p, g, v in zip(params, grads, vs):
                    nesterov(p, effective_grad(self, p, g, wd, maximize), v, lr=lr, momentum=mu)
        return loss
