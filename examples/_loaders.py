"""MNIST for the examples, from ``torch_dlbasics.data`` (verified IDX files), two ways.

- :func:`make_loaders`: torchvision datasets with ``ToTensor`` + ``Normalize`` in
  ``DataLoader``s, shuffled by :class:`EpochSampler` (resumable mid-epoch): the main job's way.
- :func:`mnist_tensors`: the whole set as two tensors the way the book loads it
  (``normalize=True``, flattened), for the chapter's small experiments.

A data failure (no route to MNIST, an unusable data folder) becomes one :class:`ExampleError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _cli import ExampleError
from torch.utils.data import DataLoader, Sampler, Subset

QUICK_TRAIN, QUICK_TEST = 2048, 1000  # --quick: the first images of each split
MEAN, STD = 0.1307, 0.3081  # MNIST's training-set pixel mean and standard deviation


def load(data_root: str | Path | None, train: bool, transform: Any = None) -> Any:
    """``torch_dlbasics.data.load_mnist``, its failure as one :class:`ExampleError`."""
    from torch_dlbasics.data import MNISTUnavailableError, load_mnist

    try:
        return load_mnist(data_root, train=train, transform=transform)
    except MNISTUnavailableError as e:
        raise ExampleError(str(e)) from None


def mnist_tensors(
    data_root: Path, train: bool, device: torch.device, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as the book loads it (``normalize=True``, flattened): x = byte / 255 in (N, 784), labels.

    Straight from the verified IDX bytes (``read_verified``): no torchvision import, which costs
    seconds in every process (and every worker of the §6.5 search).
    """
    from torch_dlbasics.data import MNISTUnavailableError, prepare_mnist, read_verified

    try:
        images, labels = read_verified(prepare_mnist(data_root), train)
    except MNISTUnavailableError as e:
        raise ExampleError(str(e)) from None
    except (OSError, ValueError):  # changed since verified, unreadable: load() repairs or says so
        ds = load(data_root, train)
        images, labels = ds.data, ds.targets
    x = images[:limit].reshape(-1, 784).to(torch.float32).div_(255.0)
    return x.to(device), labels[:limit].to(device)


class EpochSampler(Sampler[int]):
    """A fresh permutation each epoch, drawn from ``(seed, epoch)`` alone, that can start mid-epoch.

    Because the order depends on nothing but the seed and the epoch, a resumed run gets the
    same batches as the uninterrupted one: ``set_epoch(epoch, start)`` skips the ``start``
    samples already seen without loading them.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def make_loaders(
    data_root: str | Path | None,
    batch_size: int = 64,
    *,
    quick: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    train_sampler: Sampler[int] | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Train and test DataLoaders over torchvision's MNIST (quick: the first 2048 / 1000 images).

    The train loader shuffles with :class:`EpochSampler` unless ``train_sampler`` is given
    (e.g. a ``DistributedSampler`` built over ``train_loader.dataset``).
    """
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train: Any = load(data_root, True, transform)
    test: Any = load(data_root, False, transform)
    if quick:
        train, test = Subset(train, range(QUICK_TRAIN)), Subset(test, range(QUICK_TEST))
    sampler = train_sampler if train_sampler is not None else EpochSampler(len(train), seed)
    kw = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    # Its own generator: otherwise each new iterator draws a worker base seed from torch's
    # global RNG, which the resumed run would then draw once more than the uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train, batch_size=batch_size, sampler=sampler, generator=generator, **kw
    )
    test_loader = DataLoader(test, batch_size=1000, shuffle=False, **kw)
    return train_loader, test_loader
