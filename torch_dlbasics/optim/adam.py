"""Adam, the book's ``class Adam``: momentum and AdaGrad-like scaling, with bias correction.

.. math::

    \\eta_t = \\eta \\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t} \\qquad
    m \\leftarrow m + (1-\\beta_1)(g - m) \\qquad
    v \\leftarrow v + (1-\\beta_2)(g \\odot g - v) \\qquad
    W \\leftarrow W - \\eta_t \\frac{m}{\\sqrt{v} + \\epsilon}
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .convert import (
    _compiling,
    check_state_dict,
    effective_grad,
    effective_grads_foreach,
    params_with_grads,
    scratch,
    use_foreach,
)

__all__ = ["Adam", "adam", "adam_foreach"]


def adam(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    v_max: Optional[Tensor],
    s: Tensor,
    *,
    lr_t: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """One Adam update of one tensor, in place (book lines 95-101); ``s`` is scratch.

    ``v_max`` is the AMSGrad running maximum of ``v`` (``None`` without amsgrad).
    """
    m.lerp_(g, 1 - beta1)  # m += (1-beta1)*(g-m)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v += (1-beta2)*(g*g-v)
    if v_max is not None:
        v = torch.maximum(v_max, v, out=v_max)  # v_max = max(v_max, v), used in place of v
    torch.sqrt(v, out=s).add_(eps)  # s = sqrt(v) + eps
    p.addcdiv_(m, s, value=-lr_t)  # p -= lr_t*m/s


def adam_foreach(
    p: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    v: list[Tensor],
    v_max: Optional[list[Tensor]],
    s: list[Tensor],
    *,
    lr_t: list[float],
    beta1: float,
    beta2: float,
    eps: Union[float, list[float]],
) -> None:
    """:func:`adam` for lists of tensors of one device and dtype (``torch._foreach_*``).

    ``lr_t`` (and ``eps`` when it depends on t) hold one value per tensor: tensors whose
    gradient was ``None`` at some step have a smaller t.
    """
    torch._foreach_lerp_(m, g, 1 - beta1)  # m += (1-beta1)*(g-m)
    torch._foreach_mul_(v, beta2)  # v = beta2*v ...
    torch._foreach_addcmul_(v, g, g, value=1 - beta2)  # ... + (1-beta2)*g*g
    if v_max is not None:
        torch._foreach_maximum_(v_max, v)  # v_max = max(v_max, v), used in place of v
        v = v_max
    torch._foreach_copy_(s, v)  # s = v ...
    torch._foreach_sqrt_(s)  # ... s = sqrt(v) ...
    torch._foreach_add_(s, eps)  # ... s = sqrt(v) + eps
    torch._foreach_addcdiv_(p, m, s, [-x for x in lr_t])  # p -= lr_t*m/s


def lr_t_and_eps(group: dict[str, Any], t: float) -> tuple[float, float]:
    """The book's bias-corrected step size lr_t at step t, and the eps to add to sqrt(v).

    With ``eps_after_bias_correction`` (torch's form) the eps is ``eps*sqrt(1-beta2**t)``:
    ``lr/(1-beta1**t) * m/(sqrt(v)/sqrt(1-beta2**t) + eps) == lr_t * m/(sqrt(v) + that)``.
    """
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    lr_t = lr * (1 - beta2**t) ** 0.5 / (1 - beta1**t)  # lr_t = lr*sqrt(1-beta2**t)/(1-beta1**t)
    return lr_t, eps * (1 - beta2**t) ** 0.5 if group["eps_after_bias_correction"] else eps


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


class Adam(Optimizer):
    r"""Adam as in the book (ch. 6.1.6), with bias correction folded into the step size.

    .. math::

        g \leftarrow \pm g + \lambda p \qquad
        \eta_t = \eta \,\sqrt{1-\beta_2^t}\,/\,(1-\beta_1^t) \\
        m \leftarrow m + (1-\beta_1)(g - m) \qquad
        v \leftarrow v + (1-\beta_2)(g \odot g - v) \qquad
        p \leftarrow p - \eta_t\, \frac{m}{\sqrt{v} + \epsilon}

    with :math:`m_0 = v_0 = 0` and t the parameter's step count (``-g`` when ``maximize``;
    coupled L2 :math:`\lambda` = ``weight_decay``). ``decoupled_weight_decay=True`` instead
    multiplies :math:`p \leftarrow p(1 - \eta\lambda)` first and leaves g alone (AdamW).
    ``amsgrad=True`` uses :math:`\hat v \leftarrow \max(\hat v, v)` in place of v in the last
    line. Complex parameters are updated as pairs of reals (``torch.view_as_real``), as torch.

    Epsilon: the book adds :math:`\epsilon` to :math:`\sqrt{v}` *before* bias correction; torch
    adds it after, :math:`p \leftarrow p - \frac{\eta}{1-\beta_1^t}
    \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}`, which is the book's line with
    :math:`\epsilon\sqrt{1-\beta_2^t}` in place of :math:`\epsilon`. With
    ``eps_after_bias_correction=True`` that is what is used, so the result is torch's.

    Equivalent torch call: ``torch.optim.Adam(params, lr=lr, betas=betas, eps=eps,
    weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)``
    (``torch.optim.AdamW`` for ``decoupled_weight_decay=True``). They agree exactly when
    ``eps == 0``, or for any eps with ``eps_after_bias_correction=True``. With the book's
    default (eps=1e-7 before bias correction) they differ by O(eps) in the early steps.

    Differences from the book: ``betas`` replaces ``beta1, beta2`` and ``eps`` is an argument
    (the book hard-codes 1e-7), as in torch; the step count t is per parameter (the book has
    one ``iter`` for all), which differs only when some gradients are ``None``; weight decay,
    amsgrad, maximize are additions (off by default). State per parameter, named as torch
    names it: ``step`` (float scalar tensor t), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with
    amsgrad, ``max_exp_avg_sq``; created at the parameter's first step.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (book default 0.001).
        betas: :math:`(\beta_1, \beta_2)` (book default (0.9, 0.999)).
        eps: :math:`\epsilon` (book 1e-7).
        weight_decay: :math:`\lambda` (default 0).
        amsgrad: use the running maximum of v (default False).
        decoupled_weight_decay: AdamW-style decay (default False).
        maximize: ascend instead of descend (default False).
        foreach: ``True`` multi-tensor path, ``False`` per-tensor loop, ``None`` choose
            (under ``torch.compile`` always the per-tensor loop, which the compiler fuses).
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

    def __init__(
        self,
        params: Any,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        eps_after_bias_correction: bool = False,
    ) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "eps_after_bias_correction": eps_after_bias_correction,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _state_keys(group: dict[str, Any]) -> set[str]:
        keys = {"step", "exp_avg", "exp_avg_sq"}
        return keys | {"max_exp_avg_sq"} if group.get("amsgrad") else keys

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check ``state_dict`` fits (class, parameter layout) before loading; see ``convert``."""
        check_state_dict(self, state_dict, self._state_keys)
        super().load_state_dict(state_dict)

    def _init_state(self, p: Tensor, amsgrad: bool) -> dict[str, Tensor]:
        state = self.state[p]
        if "step" not in state:
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=scalar)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform one update; return the closure's loss (``None`` without a closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compiling = _compiling()
        for group, params, grads in params_with_grads(self):
            if not params:
                continue
            amsgrad = group["amsgrad"]
            states = [self._init_state(p, amsgrad) for p in params]
            ms = [state["exp_avg"] for state in states]
            vs = [state["exp_avg_sq"] for state in states]
            v_maxs = [state["max_exp_avg_sq"] for state in states] if amsgrad else None
            steps = [state["step"] for state in states]
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            wd, maximize = group["weight_decay"], group["maximize"]
            decoupled = group["decoupled_weight_decay"]
            eps_after = group["eps_after_bias_correction"]
            wd_g = 0.0 if decoupled else wd  # coupled L2 goes into the gradient

            # Under torch.compile the per-tensor path, whatever ``foreach`` says: the multi-tensor
            # path needs the step counts as Python floats (one lr_t per tensor), which would
            # break the graph; the compiler fuses the per-tensor ops itself.
            if use_foreach(group["foreach"], params) and not compiling:
                lists = [params, grads, ms, vs, steps] + ([v_maxs] if amsgrad else [])
                for tensors, _ in self._group_tensors_by_device_and_dtype(lists).values():
                    ps, gs, m, v, t = tensors[:5]
                    v_max = tensors[5] if amsgrad else None
                    torch._foreach_add_(t, 1)
                    if decoupled and wd != 0:
                        torch._foreach_mul_(ps, 1 - lr * wd)  # p *= 1 - lr*weight_decay
                    gs = effective_grads_foreach(self, ps, gs, wd_g, maximize)
                    ts = torch.stack(t).tolist()  # one read for all step counts
                    table = {x: lr_t_and_eps(group, x) for x in set(ts)}
                    lr_ts, epss = [table[x][0] for x in ts], [table[x][1] for x in ts]
                    if torch.is_complex(ps[0]):  # one dtype per list
                        ps, gs, m, v = [[_real(x) for x in xs] for xs in (ps, gs, m, v)]
                        v_max = [_real(x) for x in v_max] if v_max is not None else None
                    adam_foreach(
                        ps,
                        gs,
                        m,
                        v,
                        v_max,
                        scratch(self, v, 1),
                        lr_t=lr_ts,
                        beta1=beta1,
                        beta2=beta2,
                        eps=epss if eps_after else eps,
                    )
            else:
                for i, (p, g, m, v, t) in enumerate(zip(params, grads, ms, vs, steps)):
                    t += 1
                    if decoupled and wd != 0:
                        p.mul_(1 - lr * wd)  # p *= 1 - lr*weight_decay
                    g = effective_grad(self, p, g, wd_g, maximize)
                    # Under torch.compile the step stays a tensor (no .item() in the graph).
                    lr_t, eps_t = lr_t_and_eps(group, t if compiling else t.item())
                    v_max = v_maxs[i] if v_maxs is not None else None
                    p, g, m, v = _real(p), _real(g), _real(m), _real(v)
                    v_max = _real(v_max) if v_max is not None else None
                    (s,) = scratch(self, [v], 1)
                    adam(p, g, m, v, v_max, s, lr_t=lr_t, beta1=beta1, beta2=beta2, eps=eps_t)
        return loss
