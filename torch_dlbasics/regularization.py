r"""L2 regularisation (weight decay) as the book applies it: to the weights, not the biases.

.. math::
    L \leftarrow L + \frac{\lambda}{2} \sum_{W} \lVert W \rVert^2, \qquad
    \frac{\partial}{\partial W} \frac{\lambda}{2} \lVert W \rVert^2 = \lambda W

"Weights" are parameters with ``ndim >= 2`` (Linear and Conv weights); biases and BatchNorm's
gamma/beta are left out, as in the book's ``MultiLayerNet`` (its ``W1..Wn``).

Equivalent torch call: ``weight_decay=λ`` in the optimizer on a param group that holds just
those weights (``param_groups_weight_decay`` builds the groups); for plain SGD the two give the
same steps. They differ for adaptive optimizers only in how torch adds the term (AdamW decouples
it), not here.

Example::

    >>> import torch
    >>> from torch_dlbasics.regularization import l2_penalty
    >>> net = torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(2.0)
    >>> round(l2_penalty(net, 0.1).detach().item(), 6)  # 0.5 * 0.1 * (4 + 4)
    0.4
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

__all__ = ["l2_penalty", "param_groups_weight_decay"]


def _check_weight_decay(weight_decay: float) -> None:
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def l2_penalty(module: nn.Module, weight_decay: float) -> Tensor:
    """``0.5 * weight_decay * sum(W**2)`` over the parameters of ``module`` with ``ndim >= 2``.

    Float16/bfloat16 weights are squared and summed in float32, as torch's reductions accumulate
    them, and the result is returned in the weights' dtype after the scaling by ``weight_decay``
    (a sum of squares that overflows float16 may still give a representable penalty).
    """
    _check_weight_decay(weight_decay)
    weights = [p for p in module.parameters() if p.ndim >= 2]
    if not weights:
        return torch.zeros(())
    total = sum(torch.dot(v, v) for v in (_accumulable(w).reshape(-1) for w in weights))
    dtype = functools.reduce(torch.promote_types, (w.dtype for w in weights))
    return (0.5 * weight_decay * total).to(dtype)  # type: ignore[union-attr]


def _accumulable(w: Tensor) -> Tensor:
    """``w`` in a dtype that can accumulate its squares: float32 for float16/bfloat16."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def param_groups_weight_decay(module: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer param groups: weights (``ndim >= 2``) decayed, everything else not.

    Returns ``[{"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0}]``; parameters with ``requires_grad=False`` are
    left out.
    """
    _check_weight_decay(weight_decay)
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
