r"""The book's weight initialisations: "Xavier" and He, and a helper for whole models.

With ``n`` = fan_in (inputs per output unit: ``in_features`` for Linear,
``in_channels / groups * prod(kernel_size)`` for Conv, as torch computes it):

.. math::
    \text{xavier\_:}\ W \sim \mathcal N\!\left(0, \tfrac{1}{n}\right), \qquad
    \text{he\_:}\ W \sim \mathcal N\!\left(0, \tfrac{2}{n}\right)

Equivalent torch calls (same generator state gives the same tensor):

- ``xavier_(w)`` = ``torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="linear")``.
  This is the book's "Xavier" (std ``1/sqrt(n)``, suited to sigmoid/tanh); it is *not*
  ``torch.nn.init.xavier_normal_``, which uses Glorot's ``std = sqrt(2 / (fan_in + fan_out))``.
- ``he_(w)`` = ``torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")``.

Example::

    >>> import torch
    >>> from torch_dlbasics.init import he_
    >>> w = he_(torch.empty(256, 512), generator=torch.Generator().manual_seed(0))
    >>> ref = torch.nn.init.kaiming_normal_(torch.empty(256, 512), generator=torch.Generator().manual_seed(0))
    >>> torch.equal(w, ref)
    True
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["he_", "init_weights_", "xavier_"]


def _fan_in(tensor: Tensor) -> int:
    if tensor.dim() < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions"
        )
    receptive_field = 1
    for s in tensor.shape[2:]:
        receptive_field *= s
    return tensor.shape[1] * receptive_field


def _normal_(tensor: Tensor, std: float, generator: Optional[torch.Generator]) -> Tensor:
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def xavier_(tensor: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """The book's Xavier: ``W = randn * sqrt(1 / fan_in)``, in place; returns ``tensor``."""
    return _normal_(tensor, math.sqrt(1.0 / _fan_in(tensor)), generator)


def he_(tensor: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """He: ``W = randn * sqrt(2 / fan_in)``, in place; returns ``tensor``."""
    return _normal_(tensor, math.sqrt(2.0 / _fan_in(tensor)), generator)


_SCHEMES = {"xavier": xavier_, "sigmoid": xavier_, "he": he_, "relu": he_}
_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def init_weights_(
    module: nn.Module,
    scheme: Union[str, float],
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """Initialise every Linear/Conv weight of ``module`` with one scheme, biases to zero.

    ``scheme`` is ``"xavier"`` (alias ``"sigmoid"``), ``"he"`` (alias ``"relu"``), as the book's
    ``weight_init_std`` strings, or a float ``std`` for the book's ``std * randn``. Modules are
    visited in ``module.modules()`` order; returns ``module``.

    Example::

        >>> import torch
        >>> from torch_dlbasics.init import init_weights_
        >>> net = init_weights_(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), 0.01)
        >>> float(net[0].bias.detach().abs().sum())
        0.0
    """
    if isinstance(scheme, str):
        if scheme not in _SCHEMES:
            raise ValueError(
                f"Invalid init scheme: {scheme!r} (expected 'xavier', 'he' or a float std)"
            )
        fill = _SCHEMES[scheme]
    else:
        std = float(scheme)
        if not std >= 0.0:
            raise ValueError(f"Invalid init std: {scheme}")

        def fill(w: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
            return _normal_(w, std, generator)

    for m in module.modules():
        if isinstance(m, _LAYERS):
            fill(m.weight, generator=generator)
            if m.bias is not None:
                with torch.no_grad():
                    m.bias.zero_()
    return module
