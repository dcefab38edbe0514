"""Adam, the book's ``class Adam`` (§6.1.6): momentum and AdaGrad-like scaling, bias-corrected.

.. math::

    \\eta_t = \\eta \\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t} \\qquad
    m \\leftarrow m + (1-\\beta_1)(g - m) \\qquad
    v \\leftarrow v + (1-\\beta_2)(g \\odot g - v) \\qquad
    W \\leftarrow W - \\eta_t \\frac{m}{\\sqrt{v} + \\epsilon}
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from ._hyperparameters import check_betas, check_engine_flags, check_lr, check_non_negative
from ._state_dict import load_state_dict, restore_groups, step_dtype
from ._step import run_step

__all__ = ["Adam", "AdamW", "adam"]


def adam(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    v_max: Optional[Tensor],
    t: Any,
    s: Optional[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    eps_after_bias_correction: bool,
) -> None:
    """One Adam step of parameter ``p`` (W) with gradient ``g``, in place.

    ``m``, ``v``: the moments (state ``exp_avg``, ``exp_avg_sq``); ``v_max``: AMSGrad's running
    maximum of v (state ``max_exp_avg_sq``; ``None`` without amsgrad); ``t``: the step count
    (``t += 1`` advances state ``step``); ``s``: scratch for the changed gradient and then the
    denominator (``None``: a new tensor). Works unchanged on
    :class:`~torch_dlbasics.optim._foreach.TensorList` s.
    """
    if maximize:
        g = torch.neg(g, out=s)  # g = -g
    if weight_decay != 0 and not decoupled_weight_decay:
        g = torch.add(g, p, alpha=weight_decay, out=s)  # g = g + λW  (L2 as a gradient, §6.4.2)
    if weight_decay != 0 and decoupled_weight_decay:
        p.mul_(1 - lr * weight_decay)  # W = W * (1 - lr*λ)  (AdamW's decoupled decay)
    t += 1  # t = t + 1
    lr_t = lr * (1 - beta2**t) ** 0.5 / (1 - beta1**t)  # lr_t = lr * sqrt(1-β2^t) / (1-β1^t)
    m.lerp_(g, 1 - beta1)  # m = m + (1-β1)*(g - m)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v = v + (1-β2)*(g*g - v)
    if amsgrad:
        v = v_max.clamp_min_(v)  # v_max = max(v_max, v), used as v
    if eps_after_bias_correction:
        eps = eps * (1 - beta2**t) ** 0.5  # torch's eps, moved before the bias correction
    s = torch.sqrt(v, out=s).add_(eps)  # s = sqrt(v) + eps
    p.addcdiv_(m, s, value=-lr_t)  # W = W - lr_t * m / s


class Adam(Optimizer):
    r"""Adam as in the book (§6.1.6), bias correction folded into the step size, with torch's
    Adam signature.

    .. math::

        g \leftarrow \pm \frac{\partial L}{\partial W} + \lambda W \qquad
        \eta_t = \eta \,\sqrt{1-\beta_2^t}\,/\,(1-\beta_1^t) \\
        m \leftarrow m + (1-\beta_1)(g - m) \qquad
        v \leftarrow v + (1-\beta_2)(g \odot g - v) \qquad
        W \leftarrow W - \eta_t\, \frac{m}{\sqrt{v} + \epsilon}

    with :math:`m_0 = v_0 = 0` and t the parameter's step count (``-`` when ``maximize``;
    coupled L2 :math:`\lambda` = ``weight_decay``). ``decoupled_weight_decay=True`` instead
    multiplies :math:`W \leftarrow W(1 - \eta\lambda)` first and leaves g alone (AdamW, also
    :class:`AdamW`). ``amsgrad=True`` uses :math:`\hat v \leftarrow \max(\hat v, v)` in place of
    v in the last line. Complex parameters are updated as pairs of reals, as torch.

    Epsilon: the book adds :math:`\epsilon` to :math:`\sqrt{v}` *before* bias correction; torch
    adds it after, :math:`W \leftarrow W - \frac{\eta}{1-\beta_1^t}
    \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}`, which is the book's line with
    :math:`\epsilon\sqrt{1-\beta_2^t}` in place of :math:`\epsilon`. With
    ``eps_after_bias_correction=True`` that is what is used, so the result is torch's.

    Equivalent torch call: ``torch.optim.Adam(params, lr, betas, eps, weight_decay, amsgrad,
    foreach=..., maximize=..., capturable=..., differentiable=..., fused=...,
    decoupled_weight_decay=...)`` (``torch.optim.AdamW`` for decoupled decay), every argument with
    the same meaning. They agree exactly (to rounding) when ``eps == 0``, or for any eps with
    ``eps_after_bias_correction=True``. With the book's default (eps=1e-7 before bias
    correction) they differ by O(eps) in the early steps.

    Differences from the book: ``betas`` replaces ``beta1, beta2`` and ``eps`` is an argument
    (the book hard-codes 1e-7), as in torch; the step count t is per parameter (the book has
    one ``iter`` for all), which differs only when some gradients are ``None``; weight decay,
    amsgrad, maximize are additions (off by default). State per parameter, named as torch
    names it: ``step`` (float scalar tensor t), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with
    amsgrad, ``max_exp_avg_sq``; created at the parameter's first step.

    Args:
        params: iterable of parameters or named parameters, or dicts defining parameter groups.
        lr: learning rate :math:`\eta`, a float or a 1-element tensor (book default 0.001).
        betas: :math:`(\beta_1, \beta_2)`, floats or 1-element tensors (book (0.9, 0.999)).
        eps: :math:`\epsilon` (book 1e-7).
        weight_decay: :math:`\lambda` (default 0).
        amsgrad: use the running maximum of v (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose.
        maximize: ascend instead of descend (default False).
        capturable: keep the step counts on the device and read nothing back, so the step can
            be captured in a CUDA graph (as torch: CUDA and other graph-capable devices only).
        differentiable: the step is differentiable (autograd records it), as torch's.
        fused: ``True`` compiles the update with ``torch.compile`` (CPU and CUDA).
        decoupled_weight_decay: AdamW-style decay (default False).
        eps_after_bias_correction: add eps after bias correction, as torch (default False:
            the book's form).

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import Adam
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = Adam([w], lr=0.1, eps=0.0)
        >>> w.grad = torch.full((1,), 3.0)
        >>> opt.step()  # t=1: m = 0.3, v = 0.009, lr_t = 0.1*sqrt(0.001)/0.1
        >>> w.data, opt.state[w]["step"]
        (tensor([0.9000]), tensor(1.))
    """

    _NUMERIC = ("lr", "betas", "eps", "weight_decay")
    _REQUIRED = ("lr", "betas", "eps", "eps_after_bias_correction")
    _FILL: ClassVar[dict[str, Any]] = {
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": False,
    }
    _STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _LATE_STATE = ("max_exp_avg_sq",)  # amsgrad switched on after some steps: created then

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.001,
        betas: tuple[Union[float, Tensor], Union[float, Tensor]] = (0.9, 0.999),
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        eps_after_bias_correction: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and foreach and not capturable:
            raise ValueError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        check_lr(lr)
        check_non_negative("eps", eps)
        betas = check_betas(betas, foreach=foreach, capturable=capturable)
        check_non_negative("weight_decay", weight_decay)
        check_engine_flags(foreach=foreach, fused=fused, differentiable=differentiable)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "eps_after_bias_correction": eps_after_bias_correction,
        }
        super().__init__(params, defaults)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform one update; return the closure's loss (``None`` without a closure)."""
        check = getattr(self, "_accelerator_graph_capture_health_check", None)
        (check or self._cuda_graph_capture_health_check)()  # torch's CUDA-graph checks
        return run_step(self, closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class (torch's hook protocol; a refused load changes
        nothing). A ``torch.optim.Adam``/``AdamW`` state dict: see ``convert.from_torch``."""
        load_state_dict(self, state_dict, super().load_state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        restore_groups(self)

    # Bookkeeping for the engine (torch_dlbasics.optim._step) -----------------------------
    def _update(self, group: dict[str, Any], fresh: bool) -> tuple[Callable[..., None], dict]:
        if group["foreach"] and isinstance(group["lr"], Tensor) and not group["capturable"]:
            raise RuntimeError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        beta1, beta2 = group["betas"]
        return adam, {
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "amsgrad": group["amsgrad"],
            "maximize": group["maximize"],
            "decoupled_weight_decay": group["decoupled_weight_decay"],
            "eps_after_bias_correction": group["eps_after_bias_correction"],
        }

    def _state_args(self, group: dict[str, Any]) -> tuple[Optional[str], ...]:
        v_max = "max_exp_avg_sq" if group["amsgrad"] else None
        return ("exp_avg", "exp_avg_sq", v_max, "step")

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        on_device = bool(group["capturable"] or group["fused"])
        if "step" not in state:
            state["step"] = torch.zeros(
                (), dtype=step_dtype(on_device), device=p.device if on_device else "cpu"
            )
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if group["amsgrad"] else None):
            if key is not None and key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _scratch_slots(self, group: dict[str, Any]) -> tuple[bool, ...]:
        return (True,)


class AdamW(Adam):
    r"""AdamW: :class:`Adam` with decoupled weight decay, with torch's AdamW signature.

    The formula is :func:`adam` with ``decoupled_weight_decay=True``:
    :math:`W \leftarrow W(1 - \eta\lambda)` before the Adam step, the gradient left alone
    (Loshchilov & Hutter, arXiv:1711.05101). Defaults: the book's Adam (``lr=0.001``,
    ``eps=1e-7`` before bias correction) and torch's AdamW ``weight_decay=0.01``.

    Equivalent torch call: ``torch.optim.AdamW(params, lr, betas, eps, weight_decay, amsgrad,
    maximize=..., foreach=..., capturable=..., differentiable=..., fused=...)``; they agree
    exactly (to rounding) with ``eps_after_bias_correction=True`` or ``eps=0`` (see
    :class:`Adam`). Loading a state dict keeps ``decoupled_weight_decay=True``, as torch's.

    Example:
        >>> import torch
        >>> from torch_dlbasics.optim import AdamW
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = AdamW([w], lr=0.1, weight_decay=0.5, eps=0.0)
        >>> w.grad = torch.full((1,), 3.0)
        >>> opt.step()  # W = 1*(1 - 0.1*0.5) - 0.1
        >>> w.data
        tensor([0.8500])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.001,
        betas: tuple[Union[float, Tensor], Union[float, Tensor]] = (0.9, 0.999),
        eps: float = 1e-7,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        eps_after_bias_correction: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            eps_after_bias_correction=eps_after_bias_correction,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
