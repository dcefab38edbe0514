"""The book's five optimizers (§6.1) as ``torch.optim.Optimizer`` subclasses.

Each algorithm file holds its update function, the whole step in the book's symbols, and the
class with torch's signature around it (``sgd.py``, ``momentum.py``, ``nesterov.py``,
``adagrad.py``, ``adam.py``). The shared engine lives beside them: ``_step.py`` (one step:
validation, state, path choice, dispatch), ``_foreach.py`` (the multi-tensor path),
``_fused.py`` (``fused=True``), ``_scratch.py`` (kept temporaries), ``_state_dict.py``
(loading), ``_hyperparameters.py`` (argument checks); ``convert.py`` moves checkpoints to and
from ``torch.optim``.

Each agrees with a torch built-in under stated conditions (see each class):

>>> import torch
>>> from torch_dlbasics.optim import Adam, AdaGrad, Momentum, Nesterov, SGD
>>> model = torch.nn.Linear(3, 1)
>>> opt = Momentum(model.parameters(), lr=0.01, momentum=0.9)
>>> loss = model(torch.ones(2, 3)).pow(2).mean()
>>> loss.backward()
>>> opt.step()
"""

from .adagrad import AdaGrad, Adagrad
from .adam import Adam, AdamW
from .momentum import Momentum
from .nesterov import Nesterov
from .sgd import SGD

__all__ = ["SGD", "AdaGrad", "Adagrad", "Adam", "AdamW", "Momentum", "Nesterov"]
