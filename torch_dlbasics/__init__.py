"""torch_dlbasics: the techniques of *Deep Learning from Scratch*, chapter 6, as PyTorch parts.

The book's five optimizers (``SGD``, ``Momentum``, ``Nesterov``, ``AdaGrad``, ``Adam``) are
importable from here and from :mod:`torch_dlbasics.optim`; layers live in
:mod:`torch_dlbasics.nn`, initialisation in :mod:`torch_dlbasics.init`, L2 regularisation in
:mod:`torch_dlbasics.regularization` (``l2_penalty`` also here).
"""

from torch_dlbasics.optim import SGD, AdaGrad, Adam, Momentum, Nesterov
from torch_dlbasics.regularization import l2_penalty, param_groups_weight_decay

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "__version__",
    "l2_penalty",
    "param_groups_weight_decay",
]
