"""Swapping layers in an existing model: ``convert_model`` (torch's BatchNorm/Dropout to ours)
and the machinery ``SyncBatchNorm.convert_sync_batchnorm`` shares with it.

The rule, for both: a layer whose class is *exactly* one of the classes converted is replaced
by ours, which takes over the very same parameter and buffer tensors, the train/eval mode, the
forward/backward/state-dict hooks and ``qconfig``. A subclass of those classes (not ours) is
left as it is, with one warning naming it: its class may change the forward or hold a
parametrization, and replacing it would silently drop that. Our own layers are left alone (they
are subclasses of torch's, so ``isinstance`` checks in the ecosystem see them as BatchNorm).

Example::

    >>> import torch
    >>> from torch_dlbasics.nn import convert_model, BatchNorm2d
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.2))
    >>> net = convert_model(net)
    >>> type(net[1]).__name__, type(net[2]).__name__
    ('BatchNorm2d', 'Dropout')
    >>> isinstance(net[1], BatchNorm2d), isinstance(net[1], torch.nn.BatchNorm2d)
    (True, True)
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn

from torch_dlbasics.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from torch_dlbasics.nn.dropout import Dropout

__all__ = ["convert_model"]

_HOOKS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_is_full_backward_hook",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
"""A Module's hook registries (those this torch has): handed over as they are, so the handles
users hold still remove them."""

Rule = Callable[[nn.Module], "tuple[Optional[Callable[[], nn.Module]], bool]"]
"""``rule(module) -> (make, family)``: ``make()`` builds the replacement when the module is
converted (else ``None``); ``family`` says the module belongs to the converted family (so a
subclass left alone is reported)."""


def carry_over(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` takes over ``old``'s parameters and buffers (the same tensor objects), mode, hooks
    and ``qconfig``; returns ``new``."""
    with torch.no_grad():
        for name, p in old._parameters.items():
            if name in new._parameters:
                setattr(new, name, p)
        for name, b in old._buffers.items():
            if name in new._buffers:
                setattr(new, name, b)
    new.train(old.training)
    for attr in _HOOKS:
        if attr in old.__dict__:
            object.__setattr__(new, attr, old.__dict__[attr])
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig  # type: ignore[assignment]
    return new


def convert_modules(module: nn.Module, rule: Rule) -> nn.Module:
    """Apply ``rule`` to ``module`` and every submodule (children replaced in place; a module
    shared in several places gets one replacement); warn once about the subclasses left alone.
    Every decision is taken before the first replacement, so a refusal changes nothing.
    Returns ``module``, or its replacement."""
    decisions = {id(m): rule(m) for m in module.modules()}
    replaced: dict[int, nn.Module] = {}
    left_alone: list[str] = []

    def visit(m: nn.Module, path: str) -> nn.Module:
        if id(m) in replaced:
            return replaced[id(m)]
        make, family = decisions[id(m)]
        out = m
        if make is not None:
            out = carry_over(m, make())
        elif family:
            left_alone.append(f"{path or '(root)'} ({type(m).__module__}.{type(m).__qualname__})")
        replaced[id(m)] = out
        for name, child in m.named_children():
            out.add_module(name, visit(child, f"{path}.{name}" if path else name))
        return out

    result = visit(module, "")
    if left_alone:
        warnings.warn(
            "left as they are, since they subclass a converted class and replacing them would "
            "drop what the subclass changes (its forward, a parametrization): "
            + ", ".join(left_alone),
            UserWarning,
            stacklevel=3,
        )
    return result


_OURS_FOR_TORCH: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.Dropout: Dropout,
}


def _model_rule(m: nn.Module) -> tuple[Optional[Callable[[], nn.Module]], bool]:
    ours = _OURS_FOR_TORCH.get(type(m))
    if ours is Dropout:
        return (lambda: Dropout(m.p, m.inplace)), True  # type: ignore[arg-type]
    if ours is not None:
        return (lambda: _batchnorm_like(ours, m)), True
    family = isinstance(m, tuple(_OURS_FOR_TORCH)) and not isinstance(m, (_BatchNorm, Dropout))
    return None, family


def _batchnorm_like(cls: Any, m: nn.Module, **kwargs: Any) -> nn.Module:
    """An empty (meta) ``cls`` with ``m``'s configuration; :func:`carry_over` fills it."""
    return cls(
        m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
        device="meta", bias=m.bias is not None or not m.affine, **kwargs,
    )  # fmt: skip


def sync_batchnorm_rule(cls: Any, process_group: Any) -> Rule:
    """``SyncBatchNorm.convert_sync_batchnorm``'s rule: torch's and our BatchNorm1d/2d/3d and
    SyncBatchNorm exactly; ``book=True`` refused."""
    exact = (
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
        BatchNorm1d, BatchNorm2d, BatchNorm3d, cls,
    )  # fmt: skip

    def rule(m: nn.Module) -> tuple[Optional[Callable[[], nn.Module]], bool]:
        if type(m) in exact:
            if getattr(m, "book", False):
                raise ValueError(
                    "convert_sync_batchnorm: a BatchNorm with book=True (the book's statistics "
                    "per activation of the flattened input) has no synchronized form"
                )
            return (lambda: _batchnorm_like(cls, m, process_group=process_group)), True
        return None, isinstance(m, nn.modules.batchnorm._BatchNorm)

    return rule


def convert_model(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.Dropout``
    replaced by ours (like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, children in place).

    Parameters and buffers are the same tensor objects (so their dtype, device and optimizer
    references carry over), and so are the train/eval mode, the hooks and ``qconfig``: the
    converted model computes the same numbers. Only exactly those torch classes are converted;
    a subclass of them (say, with its own ``forward``) is left as it is and named in a warning,
    since replacing it would drop what it changes. Our layers, and other classes such as
    ``torch.nn.SyncBatchNorm``, are left alone.
    """
    return convert_modules(module, _model_rule)
