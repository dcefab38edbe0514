"""The book's five optimizers (ch. 6.1) as ``torch.optim.Optimizer`` subclasses.

Each agrees with a torch built-in under stated conditions (see each class and the README):

>>> import torch
>>> from torch_dlbasics.optim import Adam, AdaGrad, Momentum, Nesterov, SGD
>>> model = torch.nn.Linear(3, 1)
>>> opt = Momentum(model.parameters(), lr=0.01, momentum=0.9)
>>> loss = model(torch.ones(2, 3)).pow(2).mean()
>>> loss.backward()
>>> opt.step()
"""

from .adagrad import AdaGrad
from .adam import Adam
from .momentum import Momentum
from .nesterov import Nesterov
from .sgd import SGD

__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Nesterov"]
