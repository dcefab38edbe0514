"""AdaGrad, the book's ``class AdaGrad`` (§6.1.5): per-element learning rates that decay with h.

.. math::

    h \\leftarrow h + \\frac{\\partial L}{\\partial W} \\odot \\frac{\\partial L}{\\partial W} \\qquad
    W \\leftarrow W - \\eta \\frac{1}{\\sqrt{h} + \\epsilon} \\frac{\\partial L}{\\partial W}
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from ._hyperparameters import check_engine_flags, check_lr, check_non_negative, scalar_value
from ._state_dict import load_state_dict, restore_groups, step_dtype
from ._step import run_step

__all__ = ["AdaGrad", "Adagrad", "adagrad"]


def adagrad(
    p: Tensor,
    g: Tensor,
    h: Tensor,
    t: Any,
    s: Optional[Tensor],
    d: Optional[Tensor],
    *,
    lr: float,
    lr_decay: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One AdaGrad step of parameter ``p`` (W) with gradient ``g``, in place.

    ``h``: the sum of squared gradients (state ``sum``); ``t``: the step count (``t += 1``
    advances state ``step``); ``s``, ``d``: scratch for the changed gradient and for the
    denominator (``None``: new tensors). ``lr_decay`` is torch's (0: the book). Works unchanged
    on :class:`~torch_dlbasics.optim._foreach.TensorList` s.
    """
    if maximize:
        g = torch.neg(g, out=s)  # g = -g
    if weight_decay != 0:
        g = torch.add(g, p, alpha=weight_decay, out=s)  # g = g + λW  (L2 as a gradient, §6.4.2)
    t += 1  # t = t + 1
    lr_t = lr / (1 + (t - 1) * lr_decay)  # lr_t = lr / (1 + (t-1)*lr_decay)
    h.addcmul_(g, g)  # h = h + g*g
    d = torch.sqrt(h, out=d).add_(eps)  # d = sqrt(h) + eps
    p.addcdiv_(g, d, value=-lr_t)  # W = W - lr_t * g / d


class AdaGrad(Optimizer):
    r"""AdaGrad as in the book (§6.1.5), with torch's Adagrad signature.

    .. math::

        g \leftarrow \pm \frac{\partial L}{\partial W} + \lambda W \qquad
        \eta_t = \frac{\eta}{1 + (t-1)\,\delta} \\
        h \leftarrow h + g \odot g \qquad
        W \leftarrow W - \eta_t\, \frac{g}{\sqrt{h} + \epsilon}

    with :math:`h_0` = ``initial_accumulator_value`` (the book: 0), t the parameter's step
    count and :math:`\delta` = ``lr_decay`` (the book: 0, so :math:`\eta_t = \eta`); ``-`` when
    ``maximize``; :math:`\lambda` = ``weight_decay``. Complex parameters are updated as pairs of
    reals (``torch.view_as_real``), as torch does. ``Adagrad`` is the same class under torch's
    name, so ``from torch_dlbasics.optim import Adagrad`` replaces torch's import.

    Equivalent torch call: ``torch.optim.Adagrad(params, lr, lr_decay, weight_decay,
    initial_accumulator_value, eps, foreach, maximize=..., differentiable=..., fused=...)``,
    every argument with the same meaning. They agree always (the same formula, to rounding);
    torch's default eps is 1e-10, ours the book's 1e-7, so pass eps explicitly to compare. One
    corner differs: a param group's own ``initial_accumulator_value`` is used for its
    parameters (torch's constructor uses the constructor argument for every group).

    Differences from the book: ``eps`` is an argument (the book hard-codes 1e-7); weight decay,
    maximize, ``lr_decay`` and ``initial_accumulator_value`` are additions (default off). State
    per parameter, named as torch names it: ``sum`` (the book's ``h``) and ``step`` (a float
    scalar tensor t). Like ``torch.optim.Adagrad``, the state is created in ``__init__``.

    Args:
        params: iterable of parameters or named parameters, or dicts defining parameter groups.
        lr: learning rate :math:`\eta`, a float or a 1-element tensor (book default 0.01).
        lr_decay: torch's learning rate decay :math:`\delta` (default 0).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        initial_accumulator_value: :math:`h_0` (default 0).
        eps: :math:`\epsilon` added to :math:`\sqrt{h}` (book 1e-7).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.
        maximize: ascend instead of descend (default False).
        differentiable: the step is differentiable (autograd records it), as torch's.
        fused: ``True`` compiles the update with ``torch.compile`` (CPU and CUDA).

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import AdaGrad
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = AdaGrad([w], lr=0.1, eps=0.0)
        >>> for _ in range(2):
        ...     w.grad = torch.full((1,), 2.0)
        ...     opt.step()
        >>> opt.state[w]["sum"], w.data  # h = 4 + 4; W = 1 - 0.1*2/2 - 0.1*2/sqrt(8)
        (tensor([8.]), tensor([0.8293]))
    """

    _NUMERIC = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    _REQUIRED = ("lr", "eps")
    _FILL: ClassVar[dict[str, Any]] = {
        "lr_decay": 0.0,  # our checkpoints before torch's signature
        "weight_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": None,
    }
    _STATE_KEYS = ("step", "sum")
    _LATE_STATE = ()

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.01,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-7,
        foreach: Optional[bool] = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
    ) -> None:
        check_lr(lr)
        check_non_negative("lr_decay", lr_decay)
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("initial_accumulator_value", initial_accumulator_value)
        check_non_negative("eps", eps)
        check_engine_flags(foreach=foreach, fused=fused, differentiable=differentiable)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group, self.state[p])

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform one update; return the closure's loss (``None`` without a closure)."""
        return run_step(self, closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.Adagrad`` (the same state; torch's
        hook protocol; a refused load changes nothing)."""
        load_state_dict(self, state_dict, super().load_state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        restore_groups(self)

    # Bookkeeping for the engine (torch_dlbasics.optim._step) -----------------------------
    def _update(self, group: dict[str, Any], fresh: bool) -> tuple[Callable[..., None], dict]:
        return adagrad, {
            "lr": group["lr"],
            "lr_decay": group["lr_decay"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "maximize": group["maximize"],
        }

    def _state_args(self, group: dict[str, Any]) -> tuple[Optional[str], ...]:
        return ("sum", "step")

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        on_device = bool(group["fused"])
        state["step"] = torch.zeros(
            (), dtype=step_dtype(on_device), device=p.device if on_device else "cpu"
        )
        h0 = scalar_value(group["initial_accumulator_value"])
        state["sum"] = torch.full_like(
            p, complex(h0, h0) if p.is_complex() else h0, memory_format=torch.preserve_format
        )

    def _scratch_slots(self, group: dict[str, Any]) -> tuple[bool, ...]:
        return (bool(group["maximize"]) or scalar_value(group["weight_decay"]) != 0, True)


Adagrad = AdaGrad
"""torch's name for :class:`AdaGrad` (the same class)."""
