"""Data for the examples: MNIST through torchvision, with an offline PyPI mirror."""

from .mnist import (
    MNIST_SHA256,
    MNISTUnavailableError,
    default_root,
    load_mnist,
    prepare_mnist,
    read_idx,
    read_verified,
    sweep_leftovers,
    verify_raw,
    write_idx,
)

__all__ = [
    "MNIST_SHA256",
    "MNISTUnavailableError",
    "default_root",
    "load_mnist",
    "prepare_mnist",
    "read_idx",
    "read_verified",
    "sweep_leftovers",
    "verify_raw",
    "write_idx",
]
