"""SGD, the book's ``class SGD``: step against the gradient.

.. math::

    W \\leftarrow W - \\eta \\frac{\\partial L}{\\partial W}
"""

from __future__ import annotations

import math
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

__all__ = ["SGD", "sgd", "sgd_foreach"]


def sgd(p: Tensor, g: Tensor, *, lr: float) -> None:
    """One SGD update of one tensor, in place (book: ``params[key] -= self.lr * grads[key]``)."""
    p.add_(g, alpha=-lr)  # p -= lr*g


def sgd_foreach(p: list[Tensor], g: list[Tensor], *, lr: float) -> None:
    """:func:`sgd` for lists of tensors of one device and dtype (``torch._foreach_*``)."""
    torch._foreach_add_(p, g, alpha=-lr)  # p -= lr*g


class SGD(Optimizer):
    r"""Stochastic gradient descent as in the book (ch. 6.1.2).

    .. math::

        g \leftarrow \pm g + \lambda p \qquad
        p \leftarrow p - \eta\, g

    (``-g`` when ``maximize``; :math:`\lambda` = ``weight_decay``, torch's coupled L2.)

    Equivalent torch call: ``torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
    maximize=maximize)`` (``momentum=0``). They agree always (same operation per element).

    Differences from the book: the book's ``SGD(lr)`` has neither weight decay nor maximize (both
    default off, so the default is the book's); torch's default ``lr`` is 1e-3, ours the book's
    0.01. State: none.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (book default 0.01).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` for the ``torch._foreach_*`` multi-tensor path, ``False`` for the
            per-tensor loop, ``None`` to choose (the multi-tensor path, except under
            ``torch.compile``: one op per tensor, so it never costs an extra pass).

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import SGD
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = SGD([w], lr=0.1)
        >>> loss = (w ** 2).sum()
        >>> loss.backward()
        >>> opt.step()
        >>> w.data
        tensor([0.8000, 1.6000])
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: Optional[bool] = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _state_keys(group: dict[str, Any]) -> set[str]:
        return set()

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
            lr, wd, maximize = group["lr"], group["weight_decay"], group["maximize"]
            # One op per tensor: the multi-tensor path makes no extra pass, so on CPU it is
            # chosen for tensors of any size (measured on resnet18: 0.96-0.98x the loop).
            if use_foreach(group["foreach"], params, max_mean_numel=math.inf):
                grouped = self._group_tensors_by_device_and_dtype([params, grads])
                for (ps, gs), _ in grouped.values():
                    sgd_foreach(ps, effective_grads_foreach(self, ps, gs, wd, maximize), lr=lr)
            else:
                for p, g in zip(params, grads):
                    sgd(p, effective_grad(self, p, g, wd, maximize), lr=lr)
        return loss
