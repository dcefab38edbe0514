"""torch_dlbasics: the techniques of *Deep Learning from Scratch*, chapter 6, as PyTorch parts.

The book's five optimizers (``SGD``, ``Momentum``, ``Nesterov``, ``AdaGrad``, ``Adam``) are
importable from here and from :mod:`torch_dlbasics.optim`; layers live in
:mod:`torch_dlbasics.nn`, initialisation in :mod:`torch_dlbasics.init`, MNIST in
:mod:`torch_dlbasics.data`, L2 regularisation in :mod:`torch_dlbasics.regularization`
(``l2_penalty`` also here). ``nn``, ``init`` and ``data`` are attributes of the package, imported
on first use so that ``import torch_dlbasics`` stays as fast as the optimizers alone.

Example::

    >>> import torch_dlbasics as dl
    >>> dl.nn.BatchNorm2d.__name__, dl.init.he_.__name__, dl.data.load_mnist.__name__
    ('BatchNorm2d', 'he_', 'load_mnist')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torch_dlbasics.optim import SGD, AdaGrad, Adam, Momentum, Nesterov
from torch_dlbasics.regularization import l2_penalty, param_groups_weight_decay

if TYPE_CHECKING:
    from torch_dlbasics import data, init, nn

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "__version__",
    "data",
    "init",
    "l2_penalty",
    "nn",
    "param_groups_weight_decay",
]

_LAZY_SUBMODULES = ("data", "init", "nn")


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also sets it as an attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
