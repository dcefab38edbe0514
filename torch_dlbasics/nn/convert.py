"""``convert_model``: swap torch's BatchNorm1d/2d/3d and Dropout for ours in an existing model.

Example::

    >>> import torch
    >>> from torch_dlbasics.nn import convert_model, BatchNorm2d
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.2))
    >>> net = convert_model(net)
    >>> type(net[1]).__name__, type(net[2]).__name__
    ('BatchNorm2d', 'Dropout')
    >>> isinstance(net[1], BatchNorm2d)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from torch_dlbasics.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from torch_dlbasics.nn.dropout import Dropout

__all__ = ["convert_model"]

_BATCHNORMS: tuple[tuple[type[nn.Module], type[_BatchNorm]], ...] = (
    (nn.BatchNorm1d, BatchNorm1d),
    (nn.BatchNorm2d, BatchNorm2d),
    (nn.BatchNorm3d, BatchNorm3d),
)


def _convert_one(module: nn.Module) -> nn.Module:
    for theirs, ours in _BATCHNORMS:
        if isinstance(module, theirs):
            out = ours(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
            )
            if module.affine:
                with torch.no_grad():  # share the Parameters: optimizers built earlier still work
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
            return out
    if isinstance(module, nn.Dropout):
        out = Dropout(module.p, module.inplace)
        out.train(module.training)
        return out
    return module


def convert_model(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.Dropout``
    replaced by ours (like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``).

    Parameters and buffers are the same tensor objects (so their dtype and device carry over),
    the train/eval mode is kept, and the converted model computes the same numbers. Modules of
    other types, including subclasses such as ``SyncBatchNorm``, are left alone.
    """
    out = _convert_one(module)
    for name, child in module.named_children():
        out.add_module(name, convert_model(child))
    return out
