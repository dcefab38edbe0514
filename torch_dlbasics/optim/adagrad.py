"""AdaGrad, the book's ``class AdaGrad``: per-element learning rates that decay with h.

.. math::

    h \\leftarrow h + \\frac{\\partial L}{\\partial W} \\odot \\frac{\\partial L}{\\partial W} \\qquad
    W \\leftarrow W - \\eta \\frac{1}{\\sqrt{h} + \\epsilon} \\frac{\\partial L}{\\partial W}
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
    scratch,
    use_foreach,
)

__all__ = ["AdaGrad", "adagrad", "adagrad_foreach"]


def adagrad(p: Tensor, g: Tensor, h: Tensor, s: Tensor, *, lr: float, eps: float) -> None:
    """One AdaGrad update of one tensor, in place (book lines 75-76); ``s`` is scratch."""
    h.addcmul_(g, g)  # h += g*g
    torch.sqrt(h, out=s).add_(eps)  # s = sqrt(h) + eps
    p.addcdiv_(g, s, value=-lr)  # p -= lr*g/s


def adagrad_foreach(
    p: list[Tensor], g: list[Tensor], h: list[Tensor], s: list[Tensor], *, lr: float, eps: float
) -> None:
    """:func:`adagrad` for lists of tensors of one device and dtype (``torch._foreach_*``)."""
    torch._foreach_addcmul_(h, g, g)  # h += g*g
    torch._foreach_copy_(s, h)  # s = h ...
    torch._foreach_sqrt_(s)  # ... s = sqrt(h) ...
    torch._foreach_add_(s, eps)  # ... s = sqrt(h) + eps
    torch._foreach_addcdiv_(p, g, s, value=-lr)  # p -= lr*g/s


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


class AdaGrad(Optimizer):
    r"""AdaGrad as in the book (ch. 6.1.5).

    .. math::

        g \leftarrow \pm g + \lambda p \qquad
        h \leftarrow h + g \odot g \qquad
        p \leftarrow p - \eta\, \frac{g}{\sqrt{h} + \epsilon}

    with :math:`h_0 = 0` (``-g`` when ``maximize``; :math:`\lambda` = ``weight_decay``).
    Complex parameters are updated as pairs of reals (``torch.view_as_real``), as torch does.

    Equivalent torch call: ``torch.optim.Adagrad(params, lr=lr, eps=eps,
    weight_decay=weight_decay, maximize=maximize)`` (``lr_decay=0``,
    ``initial_accumulator_value=0``). They agree always (the same formula; torch's default eps
    is 1e-10, ours the book's 1e-7, so pass eps explicitly to torch).

    Differences from the book: ``eps`` is an argument (the book hard-codes 1e-7); weight decay
    and maximize are additions (off by default). State per parameter, named as torch names it:
    ``sum`` (the book's ``h``) and ``step`` (a float scalar tensor counting the parameter's
    updates; not used by the formula, kept so checkpoints move to and from torch). Like
    ``torch.optim.Adagrad``, the state is created eagerly in ``__init__``.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (book default 0.01).
        eps: :math:`\epsilon` added to :math:`\sqrt{h}` (book 1e-7).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import AdaGrad
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = AdaGrad([w], lr=0.1, eps=0.0)
        >>> for _ in range(2):
        ...     w.grad = torch.full((1,), 2.0)
        ...     opt.step()
        >>> opt.state[w]["sum"], w.data  # h = 4 + 4; p = 1 - 0.1*2/2 - 0.1*2/sqrt(8)
        (tensor([8.]), tensor([0.8293]))
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.01,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: Optional[bool] = None,
    ) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        defaults = {
            "lr": lr,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)

    def _init_state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if "sum" not in state:
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=scalar)
            state["sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _state_keys(group: dict[str, Any]) -> set[str]:
        return {"step", "sum"}

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
            states = [self._init_state(p) for p in params]
            hs = [state["sum"] for state in states]
            steps = [state["step"] for state in states]
            lr, eps = group["lr"], group["eps"]
            wd, maximize = group["weight_decay"], group["maximize"]
            if use_foreach(group["foreach"], params):
                grouped = self._group_tensors_by_device_and_dtype([params, grads, hs, steps])
                for (ps, gs, h, t), _ in grouped.values():
                    torch._foreach_add_(t, 1)
                    gs = effective_grads_foreach(self, ps, gs, wd, maximize)
                    if torch.is_complex(ps[0]):  # one dtype per list
                        ps, gs, h = [[_real(x) for x in xs] for xs in (ps, gs, h)]
                    adagrad_foreach(ps, gs, h, scratch(self, h, 1), lr=lr, eps=eps)
            else:
                for p, g, h, t in zip(params, grads, hs, steps):
                    t += 1
                    g = effective_grad(self, p, g, wd, maximize)
                    p, g, h = _real(p), _real(g), _real(h)
                    (s,) = scratch(self, [h], 1)
                    adagrad(p, g, h, s, lr=lr, eps=eps)
        return loss
