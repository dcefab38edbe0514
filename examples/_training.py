"""The main job's loop: train over a DataLoader, evaluate, and stop cleanly on Ctrl-C.

:class:`DeferredInterrupt` turns the first SIGINT into a flag that :func:`train_one_epoch`
reads between steps, so a Ctrl-C never lands inside ``optimizer.step()``: the loop ends after a
whole step and the caller saves a checkpoint that resumes bit for bit. A second Ctrl-C
interrupts at once (the checkpoint on disk is then the previous one: saves are atomic).
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader


class DeferredInterrupt:
    """``with DeferredInterrupt() as stop:`` ... ``stop.requested`` is True after a Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    scheduler: Any = None,
    *,
    max_steps: int | None = None,
    losses: list[float] | None = None,
    desc: str = "train",
    progress: bool = True,
    stop: DeferredInterrupt | None = None,
) -> tuple[int, float]:
    """Train over ``loader`` (from where its sampler starts), at most ``max_steps`` steps, and
    no step more once ``stop.requested``.

    Appends each step's loss to ``losses``; returns (steps taken, images per second).
    """
    from tqdm import tqdm

    model.train()
    criterion = nn.CrossEntropyLoss()
    steps, images, pending = 0, 0, []
    n_total = len(loader.sampler) if hasattr(loader.sampler, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(
        total=n_total, desc=desc, unit="img", unit_scale=True, disable=not progress, mininterval=1.0
    )
    start = time.perf_counter()
    for x, t in loader:
        x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
        loss = criterion(model(x), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        pending.append(loss.detach())
        steps += 1
        images += len(t)
        bar.update(len(t))
        if steps % 50 == 0:  # one device sync every 50 steps, not every step
            bar.set_postfix(loss=f"{pending[-1].item():.4f}")
        if (max_steps is not None and steps >= max_steps) or (stop is not None and stop.requested):
            break
        if len(pending) >= 50:
            if losses is not None:
                losses.extend(torch.stack(pending).tolist())
            pending = []
    if losses is not None and pending:
        losses.extend(torch.stack(pending).tolist())
    bar.close()
    seconds = time.perf_counter() - start
    return steps, images / seconds if seconds > 0 else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str) -> float:
    """Accuracy on ``loader`` in eval mode (running statistics, no dropout); mode restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, t in loader:
        pred = model(x.to(device)).argmax(1)
        correct += int((pred == t.to(device)).sum())
        total += len(t)
    model.train(was_training)
    return correct / max(total, 1)
