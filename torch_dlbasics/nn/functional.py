"""Functional forms: ``batch_norm`` and ``dropout`` (each defined next to its module)."""

from torch_dlbasics.nn.batchnorm import batch_norm
from torch_dlbasics.nn.dropout import dropout

__all__ = ["batch_norm", "dropout"]
