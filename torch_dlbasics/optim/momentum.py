"""Momentum, the book's ``class Momentum``: a velocity that keeps the learning rate inside.

.. math::

    v \\leftarrow \\alpha v - \\eta \\frac{\\partial L}{\\partial W} \\qquad W \\leftarrow W + v
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

__all__ = ["Momentum", "momentum", "momentum_foreach"]


def momentum(p: Tensor, g: Tensor, v: Tensor, *, lr: float, momentum: float) -> None:
    """One Momentum update of one tensor, in place (book lines 35-36)."""
    v.mul_(momentum).add_(g, alpha=-lr)  # v = momentum*v - lr*g
    p.add_(v)  # p += v


def momentum_foreach(
    p: list[Tensor], g: list[Tensor], v: list[Tensor], *, lr: float, momentum: float
) -> None:
    """:func:`momentum` for lists of tensors of one device and dtype (``torch._foreach_*``)."""
    torch._foreach_mul_(v, momentum)  # v = momentum*v ...
    torch._foreach_add_(v, g, alpha=-lr)  # ... - lr*g
    torch._foreach_add_(p, v)  # p += v


class Momentum(Optimizer):
    r"""Momentum SGD as in the book (ch. 6.1.4), the learning rate kept inside the velocity.

    .. math::

        g \leftarrow \pm g + \lambda p \qquad
        v \leftarrow \mu v - \eta\, g \qquad
        p \leftarrow p + v

    with :math:`v_0 = 0` (``-g`` when ``maximize``; :math:`\lambda` = ``weight_decay``).

    Equivalent torch call: ``torch.optim.SGD(params, lr=lr, momentum=momentum,
    weight_decay=weight_decay, maximize=maximize)`` (``dampening=0``, ``nesterov=False``).
    They agree exactly when ``lr`` is constant, with ``v = -lr * momentum_buffer``: torch keeps
    ``b = mu*b + g; p -= lr*b`` (lr outside the buffer).

    When ``lr`` changes (an LR scheduler), the two differ: here an lr change acts on new
    gradients only and the velocity keeps the old steps' lr; torch's buffer is multiplied by the
    *new* lr as a whole. Example (``mu = 0.9``, gradient 1 every step, lr 1.0 at step 1, 0.1 at
    step 2): book ``v1 = -1, v2 = 0.9*(-1) - 0.1 = -1.0`` moves p by -1.0 at step 2; torch
    ``b1 = 1, b2 = 1.9`` moves p by ``-0.1*1.9 = -0.19``. See the README.

    Differences from the book: weight decay and maximize are additions (off by default).
    State per parameter: ``v`` (book ``self.v[key]``), created at the parameter's first step;
    :func:`torch_dlbasics.optim.convert.to_torch` / ``from_torch`` convert checkpoints.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (book default 0.01).
        momentum: :math:`\mu` (book default 0.9).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.

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
                    momentum_foreach(ps, gs, v, lr=lr, momentum=mu)
            else:
                for p, g, v in zip(params, grads, vs):
                    momentum(p, effective_grad(self, p, g, wd, maximize), v, lr=lr, momentum=mu)
        return loss
