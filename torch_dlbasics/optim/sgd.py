"""SGD, the book's ``class SGD`` (§6.1.2): step against the gradient.

.. math::

    W \\leftarrow W - \\eta \\frac{\\partial L}{\\partial W}

:func:`sgd` is the whole step; :class:`SGD` is torch's ``SGD`` signature around it. With
``momentum > 0`` the class runs :func:`~torch_dlbasics.optim.momentum.momentum` (or, with
``nesterov=True``, :func:`~torch_dlbasics.optim.nesterov.nesterov`), as torch's SGD does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from ._hyperparameters import check_engine_flags, check_lr, check_non_negative, scalar_value
from ._state_dict import load_state_dict, restore_groups
from ._step import run_step

__all__ = ["SGD", "sgd"]


def sgd(
    p: Tensor, g: Tensor, s: Optional[Tensor], *, lr: float, weight_decay: float, maximize: bool
) -> None:
    """One SGD step of parameter ``p`` (the book's W) with gradient ``g`` (∂L/∂W), in place.

    ``s``: scratch for the changed gradient (``None``: a new tensor); ``g`` itself is not
    written. Works unchanged on :class:`~torch_dlbasics.optim._foreach.TensorList` s.
    """
    if maximize:
        g = torch.neg(g, out=s)  # g = -g
    if weight_decay != 0:
        g = torch.add(g, p, alpha=weight_decay, out=s)  # g = g + λW  (L2 as a gradient, §6.4.2)
    p.add_(g, alpha=-lr)  # W = W - lr*g


class SGD(Optimizer):
    r"""Stochastic gradient descent as in the book (§6.1.2), with torch's SGD signature.

    .. math::

        g \leftarrow \pm \frac{\partial L}{\partial W} + \lambda W \qquad
        W \leftarrow W - \eta\, g

    (``-`` when ``maximize``; :math:`\lambda` = ``weight_decay``, torch's coupled L2.) With
    ``momentum`` :math:`\alpha > 0` it is the book's Momentum (§6.1.4),
    :math:`v \leftarrow \alpha v - \eta g,\ W \leftarrow W + v` (see
    :class:`~torch_dlbasics.optim.Momentum`), and with ``nesterov=True`` the book's Nesterov
    (see :class:`~torch_dlbasics.optim.Nesterov`): the same switches as torch's SGD, so an
    LR scheduler that cycles ``momentum`` (``OneCycleLR``, ``CyclicLR``) works on it as on torch's.

    Equivalent torch call: ``torch.optim.SGD(params, lr, momentum, dampening, weight_decay,
    nesterov, maximize=..., foreach=..., differentiable=..., fused=...)``, every argument with
    the same meaning. They agree exactly (to rounding) when ``momentum == 0``, and with momentum
    while ``lr`` is constant: the book keeps lr inside the velocity, ``v = -lr * b`` with torch's
    ``momentum_buffer`` b, so a changed lr acts on new gradients only here and on the whole
    buffer in torch (worked example in :class:`~torch_dlbasics.optim.Momentum`).

    Differences from the book: weight decay, maximize, momentum and the engineering flags are
    additions (off by default, so the default is the book's); the default ``lr`` is the book's
    0.01 (torch's: 1e-3). State: none without momentum; ``v`` with it.

    Args:
        params: iterable of parameters or named parameters, or dicts defining parameter groups.
        lr: learning rate :math:`\eta`, a float or a 1-element tensor (book default 0.01).
        momentum: :math:`\alpha` (default 0: plain SGD).
        dampening: torch's dampening :math:`\tau` of the momentum,
            :math:`v \leftarrow \alpha v - (1-\tau)\eta g` (not at the first step, as torch).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path (``torch._foreach_*``), ``False`` per-tensor loop,
            ``None`` choose (the multi-tensor path: one op per tensor costs no extra pass).
        differentiable: the step is differentiable (autograd records it), as torch's.
        fused: ``True`` compiles the update with ``torch.compile`` (CPU and CUDA).

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

    _NUMERIC = ("lr", "momentum", "dampening", "weight_decay")
    _REQUIRED = ("lr",)
    _FILL: ClassVar[dict[str, Any]] = {
        "momentum": 0.0,  # our checkpoints before torch's signature: SGD had no momentum
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": None,
    }
    _STATE_KEYS = ("v",)
    _LATE_STATE = ()

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: Union[float, Tensor] = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
    ) -> None:
        check_lr(lr)
        check_non_negative("momentum", momentum)
        check_non_negative("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_engine_flags(foreach=foreach, fused=fused, differentiable=differentiable)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform one update; return the closure's loss (``None`` without a closure)."""
        return run_step(self, closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class (torch's hook protocol; a refused load changes
        nothing). A ``torch.optim.SGD`` state dict with momentum: see ``convert.from_torch``."""
        load_state_dict(self, state_dict, super().load_state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        restore_groups(self)

    # Bookkeeping for the engine (torch_dlbasics.optim._step) -----------------------------
    def _update(self, group: dict[str, Any], fresh: bool) -> tuple[Callable[..., None], dict]:
        from .momentum import momentum
        from .nesterov import nesterov

        kwargs = {
            "lr": group["lr"],
            "weight_decay": group["weight_decay"],
            "maximize": group["maximize"],
        }
        if group["momentum"] == 0:
            return sgd, kwargs
        kwargs["momentum"] = group["momentum"]
        kwargs["dampening"] = 0.0 if fresh else group["dampening"]  # torch: b_1 = g, undamped
        return (nesterov if group["nesterov"] else momentum), kwargs

    def _state_args(self, group: dict[str, Any]) -> tuple[Optional[str], ...]:
        return () if group["momentum"] == 0 else ("v",)

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _scratch_slots(self, group: dict[str, Any]) -> tuple[bool, ...]:
        return (bool(group["maximize"]) or scalar_value(group["weight_decay"]) != 0,)

    def _foreach_max_mean_numel(self, group: dict[str, Any]) -> Optional[float]:
        # Plain SGD is one op per tensor: the multi-tensor path makes no extra pass, so on CPU
        # it is chosen for tensors of any size (measured on resnet18: 0.96-0.98x the loop).
        return math.inf if group["momentum"] == 0 else None
