"""The main job's network: a small CNN with our BatchNorm2d and Dropout.

conv 3x3 (32) -> BatchNorm2d -> ReLU -> max-pool 2, conv 3x3 (64) -> BatchNorm2d -> ReLU ->
max-pool 2, Dropout(0.25), linear 3136 -> 10. The convolutions have no bias: the BatchNorm's
beta is the bias. Used by ``train_mnist.py``, ``train_mnist_ddp.py`` and
``benchmarks/bench_e2e.py`` (which passes torch's classes to build the same network from them).
"""

from __future__ import annotations

from typing import Callable

from torch import nn


def build_model(
    batch_norm: Callable[[int], nn.Module] | None = None,
    dropout: Callable[[float], nn.Module] | None = None,
) -> nn.Sequential:
    """The CNN, with our BatchNorm2d and Dropout unless other classes are passed."""
    from torch_dlbasics.nn import BatchNorm2d, Dropout

    bn = batch_norm or BatchNorm2d
    drop = dropout or Dropout
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        bn(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        bn(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        drop(0.25),
        nn.Linear(64 * 7 * 7, 10),
    )
