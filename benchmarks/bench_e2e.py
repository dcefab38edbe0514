"""End to end: images per second of ``examples/train_mnist.py``'s CNN, our parts vs torch's.

Ours: the model as the example builds it (our ``BatchNorm2d`` and ``Dropout``) trained with our
``Adam``; built-in: the same architecture with ``torch.nn.BatchNorm2d``, ``torch.nn.Dropout`` and
``torch.optim.Adam`` (its default implementation on the device), both at lr 1e-3, starting
from the same weights. The data are synthetic tensors of MNIST's shape (the same batches for
both), so the data pipeline is left out and only the model and optimizer are compared. One timed
call is a few full training steps (forward, cross-entropy, backward, optimizer step) or, for
``eval``, a forward pass of 1,000 images in eval mode. Each row adds images per second of both
and ``throughput_ratio`` = ours / built-in images per second = ``1 / ratio`` (target >= 0.95).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from common import compare
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def _models(device: str) -> tuple[nn.Module, nn.Module]:
    from _mnist_cnn import build_model

    torch.manual_seed(0)
    ours = build_model().to(device)
    theirs = build_model(batch_norm=nn.BatchNorm2d, dropout=nn.Dropout).to(device)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[], None]:
    criterion = nn.CrossEntropyLoss()
    model.train()

    def steps() -> None:
        for x, t in batches:
            loss = criterion(model(x), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return steps


def _eval(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x).argmax(1)

    return forward


def _with_throughput(row: dict, images: int) -> dict:
    """Images per second from the median times; the throughput ratio ours / built-in is
    ``1 / ratio`` (the median of the per-repeat time ratios, robust to drifting load)."""
    row.update(
        images=images,
        ours_images_per_s=images / row["ours_ms"] * 1e3,
        builtin_images_per_s=images / row["builtin_ms"] * 1e3,
        throughput_ratio=1.0 / row["ratio"],
    )
    return row


def run(device: str, quick: bool) -> list[dict]:
    from torch_dlbasics.optim import Adam

    batch, steps, repeats, warmup = (16, 1, 5, 1) if quick else (64, 5, 20, 3)
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch, 1, 28, 28, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device),
        )
        for _ in range(steps)
    ]
    rows = []

    ours, theirs = _models(device)
    row = compare(
        "e2e",
        f"train_mnist CNN train step, batch {batch} x {steps} steps, Adam",
        _train_step(ours, Adam(ours.parameters(), lr=1e-3), batches),
        _train_step(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3), batches),
        device=device,
        repeats=repeats,
        warmup=warmup,
        builtin_name="torch (nn.BatchNorm2d, nn.Dropout, optim.Adam)",
    )
    rows.append(_with_throughput(row, batch * steps))

    n_eval = 100 if quick else 1000
    x = torch.randn(n_eval, 1, 28, 28, generator=g).to(device)
    ours, theirs = _models(device)
    row = compare(
        "e2e",
        f"train_mnist CNN eval forward, {n_eval} images",
        _eval(ours, x),
        _eval(theirs, x),
        device=device,
        repeats=repeats,
        warmup=warmup,
        builtin_name="torch (nn.BatchNorm2d, nn.Dropout)",
    )
    rows.append(_with_throughput(row, n_eval))
    return rows
