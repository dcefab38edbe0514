"""Modules: BatchNorm1d/2d/3d, SyncBatchNorm and Dropout with hand-written backward, and ``convert_model``."""

from torch_dlbasics.nn import functional
from torch_dlbasics.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from torch_dlbasics.nn.convert import convert_model
from torch_dlbasics.nn.dropout import Dropout
from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout",
    "SyncBatchNorm",
    "convert_model",
    "functional",
]
